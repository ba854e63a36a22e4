"""pi_0's answers to the evaluation's held-out prompts, cached once per run in <run>/baseline_answers.jsonl.

    read_baseline(path, prompts, cfg)        the cached answers, when made for these prompts, model and sampling
    answer_baseline(cfg, kept, path)         made on engines already loaded with pi_0 (round 0's generate stage)

Every round's evaluation compares its policy with these answers (dlma_ray.stages.evaluate). The pipeline runs
round 0's generate stage on kept engines (dlma_ray.workers.engines) and asks them for these answers before it
releases them, so evaluate(0) starts no pi_0 engine of its own: one pi_0 engine start a run instead of two. The
answers are the ones a fresh engine gives (per-request seeds, the prefix cache emptied first).
"""

from __future__ import annotations

import json
import logging

from dlma_ray.config.tree import Config
from dlma_ray.core import storage
from dlma_ray.stages.round import initial_model
from dlma_ray.workers import eval_tasks
from dlma_ray.workers.engines import KeptEngines

log = logging.getLogger("dlma_ray.stages.evaluate")


def read_baseline(path: str, prompts: list[dict], cfg: Config) -> list[dict] | None:
    """The cached pi_0 answers, or None when missing or made with other prompts / model / sampling."""
    if not storage.exists(path):
        return None
    by_id = {r["prompt_id"]: r for r in (json.loads(x) for x in storage.read_text(path).splitlines() if x.strip())}
    want = {"model": initial_model(cfg), **eval_tasks.answer_sampling(cfg)}
    rows = [by_id.get(p["prompt_id"]) for p in prompts]
    if all(r is not None and "token_ids" in r and all(r.get(k) == v for k, v in want.items()) for r in rows):
        return rows
    log.warning("%s was made for other prompts, model or sampling settings: answering with round 0 again", path)
    return None


def write_baseline(path: str, rows: list[dict]) -> None:
    storage.write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def answer_baseline(cfg: Config, kept: KeptEngines, path: str, prompts: list[dict]) -> int:
    """pi_0's answers to ``prompts`` (`evaluate.load_eval_prompts`) from ``kept`` (engines loaded with pi_0), cached at
    ``path`` as the evaluation would cache them. Returns how many were made (0: ``kept`` holds another model, or
    a matching cache was there)."""
    if not kept.serves(initial_model(cfg)) or read_baseline(path, prompts, cfg) is not None:
        return 0
    rows = eval_tasks.answer_prompts(kept.engine(fresh=True), initial_model(cfg), prompts, cfg)
    write_baseline(path, rows)
    return len(rows)
