"""A round's prompt rows (PROMPT_SCHEMA) from `data.source`: rendered-length checks, control tokens dropped and
counted, each prompt's fixed split (train / held out), repeats numbered."""

from __future__ import annotations

import hashlib
import json
import logging

from dlma_ray.config.tree import Config
from dlma_ray.core.prompts import context_ids
from dlma_ray.stages.round import initial_model

log = logging.getLogger("dlma_ray")


def split_of(prompt_id: str, seed: int, heldout_fraction: float) -> str:
    """A prompt's split, fixed for the whole run: held-out prompts are never trained on in any round."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:8], "little") / 2 ** 64
    return "heldout" if h < heldout_fraction else "train"


def renderer_for(cfg: Config):
    """The round-0 tokenizer and the run's ContrastiveRenderer (rendering and length checks in the driver)."""
    from dlma_ray.model.loading import load_tokenizer

    tok = load_tokenizer(initial_model(cfg), cfg.model.trust_remote_code)
    return tok, cfg.pair.renderer(tok)


def prompt_rows(cfg: Config, k: int, require_target: bool = False) -> list[dict]:
    """Prompt rows (PROMPT_SCHEMA) for round k; ``require_target`` keeps only prompts with an SFT target and
    adds it as a `target` column (Self-Contrast's y*)."""
    from dlma_ray.data.records import load_prompts

    tok, renderer = renderer_for(cfg)

    def count_tokens(messages):  # the longest of the three renderings: each must fit the engine and training
        return max(len(context_ids(tok, text))  # the ids the engine gets (BOS included)
                   for text in (renderer.plain(messages), renderer.positive(messages), renderer.negative(messages)))

    records, report = load_prompts(cfg.data, cfg.run.seed, count_tokens, require_target)  # logs its summary
    records = without_control_tokens(records, tok, cfg.data.source)
    if not records:
        raise ValueError(f"no usable prompts in data.source={cfg.data.source!r}: {report.summary()}"
                         + ("; self_contrast needs prompts with targets (an hh dialogue ending with an assistant "
                            "turn, or a target/response column)" if require_target else ""))
    return [{"prompt_id": pid, "messages_json": json.dumps(r.as_chat()), "prompt": r.prompt,
             "kind": r.kind, "split": split_of(r.prompt_id, cfg.run.seed, cfg.data.heldout_fraction),
             "round": k, **({"target": r.target} if require_target else {})}
            for r, pid in zip(records, numbered_repeats([r.prompt_id for r in records]))]


def numbered_repeats(ids: list[str]) -> list[str]:
    """Row ids for prompt ids that may repeat (data.dedup off): the n-th repeat of an id is `<id>~n`, so each
    row samples with seeds of its own and gets its own pair (the released DLMA code sampled every row); the
    split stays that of the prompt, so no text is both trained on and held out."""
    seen: dict[str, int] = {}
    out = []
    for pid in ids:
        n = seen[pid] = seen.get(pid, -1) + 1
        out.append(f"{pid}~{n}" if n else pid)
    return out


def without_control_tokens(records: list, tokenizer, source: str) -> list:
    """Drop, and count, prompts whose text holds the template's special tokens (e.g. `<|im_start|>system`):
    rendered, such text would open turns of its own, a system turn included."""
    specials = [t for t in tokenizer.all_special_tokens if len(t) > 1]
    kept = [r for r in records if not any(s in m["content"] for m in r.as_chat() for s in specials)]
    if len(kept) < len(records):
        log.warning("%s: skipped %d prompts holding the chat template's control tokens (%s)", source,
                    len(records) - len(kept), ", ".join(specials[:4]))
    return kept
