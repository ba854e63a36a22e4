"""The stage work that differs by `train.method` (README, "Methods"); the pipeline calls these runners.

    dlma                  generate (y+, y-) -> score: 4 contrastive passes + reference -> DLMA loss
    rlcd                  same data         -> score: reference only (R NaN)            -> DPO (gamma 0)
    dpo                   human pairs (`human_pair_rows`, no engine) -> score: reference -> DPO (gamma 0)
    context_distillation  generate (y+, y-) -> no model, length check only (mode none)  -> SFT on y+
    self_contrast         dlma_ray.self_contrast: N samples -> similarity, filter, reference -> grouped DPO

Every method writes the same generations and pairs tables (dlma_ray.schema), with NaN where it
computes nothing, so evaluation, the report and the comparison read any run alike.
"""

from __future__ import annotations

import json
import logging


from dlma_ray.config import Config

log = logging.getLogger("dlma_ray")
CONTRASTIVE_SCORING = ("dlma",)  # the four contrastive passes (and R) are computed only for these
UNSCORED = ("context_distillation",)  # no model in the score stage: the SFT loss needs no reference


def human_pair_rows(cfg: Config, k: int) -> list[dict]:
    """`dpo`: preference pairs from data.source as generation rows (GENERATION_SCHEMA) for round k.

    hh-rlhf rows {chosen, rejected} (two dialogues sharing all but the last turn), explicit {prompt,
    chosen, rejected} rows, or TRL's conversational preference rows, e.g. a dlma-ray export
    (dlma_ray.data.load_preference_pairs; data.split picks from an HF dataset). Pairs whose plain context exceeds
    data.max_prompt_tokens are dropped, then data.max_prompts pairs sampled with run.seed. Contexts are
    rendered with the run's template: plain for training and the reference; pos/neg with the pair, only
    so that evaluation can judge held-out pairs by R (the responses were not sampled under them).
    """
    from dlma_ray.data import _sample, load_preference_pairs
    from dlma_ray.stages import renderer_for, split_of

    tok, renderer = renderer_for(cfg)
    pairs, report = load_preference_pairs(cfg.data.source, split=cfg.data.split)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    count = lambda text: len(ids(text))  # noqa: E731
    fit = [p for p in pairs if count(renderer.plain(p.prompt.as_chat())) <= cfg.data.max_prompt_tokens]
    picked = _sample(fit, cfg.data.max_prompts, cfg.run.seed)
    log.info("dpo: %d preference pairs from %s (%s); %d too long, %d left out by data.max_prompts", len(picked),
             cfg.data.source, report.summary(), len(pairs) - len(fit), len(fit) - len(picked))
    if not picked:
        raise ValueError(f"no usable preference pairs in data.source={cfg.data.source!r}: {report.summary()}; "
                         "train.method=dpo needs hh-rlhf {chosen, rejected} rows, {prompt, chosen, rejected} rows "
                         "or TRL's conversational preference rows")
    rows = []
    for p in picked:
        chat = p.prompt.as_chat()
        rows.append({
            "prompt_id": p.prompt.prompt_id, "messages_json": json.dumps(chat), "prompt": p.prompt.prompt,
            "kind": p.prompt.kind, "split": split_of(p.prompt.prompt_id, cfg.run.seed, cfg.data.heldout_fraction),
            "round": k, "policy": f"data:{cfg.data.source}", "pos_context": renderer.positive(chat),
            "neg_context": renderer.negative(chat), "plain_context": renderer.plain(chat),
            "end_of_turn": renderer.end_of_turn, "chosen": p.chosen, "rejected": p.rejected,
            "chosen_tokens": count(p.chosen), "rejected_tokens": count(p.rejected),
            "chosen_finished": True, "rejected_finished": True,
            "chosen_token_ids": ids(p.chosen), "rejected_token_ids": ids(p.rejected)})
    return rows


def run_human_pairs(cfg: Config, run_dir: str, k: int) -> tuple[str, int]:
    """The generate stage of `dpo`: no engine, the data's pairs -> round_k/generations/."""
    import ray.data

    from dlma_ray import storage
    from dlma_ray.stages import round_dir, write_table
    from dlma_ray.schema import GENERATION_SCHEMA

    out = storage.join(round_dir(run_dir, k), "generations")
    return out, write_table(ray.data.from_items(human_pair_rows(cfg, k)), GENERATION_SCHEMA, out)
