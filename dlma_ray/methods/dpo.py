"""DPO on human-written preference pairs from `data.source` (hh-rlhf, {prompt, chosen, rejected} rows, or
TRL's preference format): no engine generates; the pairs are the round's generations."""

from __future__ import annotations

import json
import logging

from dlma_ray.config.tree import Config
from dlma_ray.config.interfaces import StageResult
from dlma_ray.methods.base import Method, register
from dlma_ray.core.prompts import context_ids
from dlma_ray.stages import generate
from dlma_ray.stages.round import Round
from dlma_ray.stages.prompt_rows import renderer_for, split_of

log = logging.getLogger("dlma_ray")


def human_pair_rows(cfg: Config, k: int) -> list[dict]:
    """Preference pairs from data.source as generation rows (GENERATION_SCHEMA) for round k.

    Pairs whose plain context exceeds data.max_prompt_tokens are dropped, then data.max_prompts pairs
    sampled with run.seed. Contexts are rendered with the run's template: plain for training and the
    reference; pos/neg with the prompt pair only so that evaluation can judge held-out pairs by R (the
    responses were not sampled under them).
    """
    from dlma_ray.data.records import load_preference_pairs
    from dlma_ray.data.sources import sample

    tok, renderer = renderer_for(cfg)
    pairs, report = load_preference_pairs(cfg.data.source, split=cfg.data.split)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    fit = [p for p in pairs if len(context_ids(tok, renderer.plain(p.prompt.as_chat()))) <= cfg.data.max_prompt_tokens]
    picked = sample(fit, cfg.data.max_prompts, cfg.run.seed)
    log.info("dpo: %d preference pairs from %s (%s); %d too long, %d left out by data.max_prompts", len(picked),
             cfg.data.source, report.summary(), len(pairs) - len(fit), len(fit) - len(picked))
    if not picked:
        raise ValueError(f"no usable preference pairs in data.source={cfg.data.source!r}: {report.summary()}; "
                         "train.method=dpo needs hh-rlhf {chosen, rejected} rows, {prompt, chosen, rejected} rows "
                         "or TRL's conversational preference rows")
    rows = []
    for p in picked:
        chat = p.prompt.as_chat()
        chosen_ids, rejected_ids = ids(p.chosen), ids(p.rejected)
        rows.append({
            "prompt_id": p.prompt.prompt_id, "messages_json": json.dumps(chat), "prompt": p.prompt.prompt,
            "kind": p.prompt.kind, "split": split_of(p.prompt.prompt_id, cfg.run.seed, cfg.data.heldout_fraction),
            "round": k, "policy": f"data:{cfg.data.source}", "pos_context": renderer.positive(chat),
            "neg_context": renderer.negative(chat), "plain_context": renderer.plain(chat),
            "end_of_turn": renderer.end_of_turn, "chosen": p.chosen, "rejected": p.rejected,
            "chosen_tokens": len(chosen_ids), "rejected_tokens": len(rejected_ids),
            "chosen_finished": True, "rejected_finished": True,
            "chosen_token_ids": chosen_ids, "rejected_token_ids": rejected_ids})
    return rows


@register
class Dpo(Method):
    name = "dpo"
    order = 20
    summary = "DPO on human-written pairs from data.source (no generation)"
    generates_on_engines = False

    def generate(self, r: Round) -> StageResult:
        return generate.from_rows(r, human_pair_rows(r.cfg, r.k))
