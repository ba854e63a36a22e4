"""Generate stage: prompt rows -> vLLM engine actors -> round_k/generations/ (GENERATION_SCHEMA).

    contrastive  y+ under the positive prompt, y- under the negative one (dlma, rlcd, context distillation)
    samples      N samples of pi_k per prompt under the plain context, each against the prompt's SFT target
                 (self_contrast, spin)
    labelled     an engine that also labels its pairs with the policy as judge (rlaif, self_rewarding), and what
                 the judge did, counted
    from_rows    rows made without an engine (dpo's human pairs)
"""

from __future__ import annotations

import json
import logging

from dlma_ray.config.interfaces import StageResult
from dlma_ray.core.schema import GENERATION_SCHEMA
from dlma_ray.stages.round import Round
from dlma_ray.stages.prompt_rows import prompt_rows
from dlma_ray.stages.pools import engine_pool, map_actors, write_table

log = logging.getLogger("dlma_ray")


def contrastive(r: Round) -> StageResult:
    """Each prompt answered once under the positive prompt (y+) and once under the negative one (y-)."""
    import ray.data

    from dlma_ray.workers.generation import GenerationEngine

    ds = map_actors(ray.data.from_items(prompt_rows(r.cfg, r.k)), engine_pool(r, GenerationEngine))
    return StageResult(r.paths.generations, write_table(ds, GENERATION_SCHEMA, r.paths.generations))


def from_rows(r: Round, rows: list[dict]) -> StageResult:
    """Generation rows made without an engine (e.g. human-written pairs) written as the round's table."""
    import ray.data

    return StageResult(r.paths.generations,
                       write_table(ray.data.from_items(rows), GENERATION_SCHEMA, r.paths.generations))


def samples(r: Round, prompts_per_call: int, num_samples: int) -> StageResult:
    """N seeded samples per prompt with an SFT target, under the plain context: one row per sample, chosen = the
    target y*, rejected = the sample (dlma_ray.workers.generation.SampleEngine)."""
    import ray.data

    from dlma_ray.workers.generation import SampleEngine

    pool = engine_pool(r, SampleEngine, batch_size=prompts_per_call, num_samples=num_samples)
    ds = map_actors(ray.data.from_items(prompt_rows(r.cfg, r.k, require_target=True)), pool)
    return StageResult(r.paths.generations, write_table(ds, GENERATION_SCHEMA, r.paths.generations))


def labelled(r: Round, engine: type, prompts_per_call: int, **engine_kwargs) -> StageResult:
    """Pairs that ``engine`` (dlma_ray.workers.labelling) samples and labels with the policy as judge; the summary
    counts what the judge did (``labelling_summary``)."""
    import ray.data

    pool = engine_pool(r, engine, batch_size=prompts_per_call, **engine_kwargs)
    ds = map_actors(ray.data.from_items(prompt_rows(r.cfg, r.k)), pool)
    rows = write_table(ds, GENERATION_SCHEMA, r.paths.generations)
    summary = labelling_summary(r.paths.generations)
    log.info("round %d: the policy labelled %d of %d prompts' pairs (no pair: %s)", r.k, summary["labelled"],
             summary["prompts"], summary["no_pair"] or "none")
    if "judgement_pairs" in summary:
        log.info("round %d: the meta-judge gave %d judgement pairs (none: %s)", r.k, summary["judgement_pairs"],
                 summary["no_judgement_pair"] or "none")
    return StageResult(r.paths.generations, rows, summary)


def labelling_summary(generations: str) -> dict:
    """What the labelling judge did in a generations table: prompts, pairs labelled, prompts with no pair by reason,
    and the judge's own counts (rlaif: answers swapped, mean confidence; self_rewarding: unparsed judgements,
    samples without a score; with its meta-judge: judgement pairs, and prompts with none by reason)."""
    import math

    from dlma_ray.core import storage

    wanted = ["label_drop", "label_preference", "judge_json", "pair_of"]
    table = storage.read_table(generations)
    table = table.select([c for c in wanted if c in table.column_names]).to_pydict()
    kinds = table.get("pair_of") or ["answers"] * len(table["label_drop"])  # a table from before judgement pairs
    answers = [i for i, kind in enumerate(kinds) if kind != "judgements"]
    drops = [table["label_drop"][i] for i in answers]
    no_pair: dict[str, int] = {}
    for d in drops:
        if d:
            no_pair[d] = no_pair.get(d, 0) + 1
    out = {"prompts": len(drops), "labelled": sum(not d for d in drops), "no_pair": no_pair}
    prefs = [p for p, d in zip((table["label_preference"][i] for i in answers), drops)
             if p is not None and not math.isnan(p)]
    if prefs:
        out["swapped"] = sum(p < 0.5 for p in prefs)
        out["mean_confidence"] = sum(max(p, 1 - p) for p in prefs) / len(prefs)
    details = [json.loads(table["judge_json"][i]) for i in answers if table["judge_json"][i]]
    for key in ("unparsed", "samples_without_score"):
        if any(key in d for d in details):
            out[key] = sum(d.get(key, 0) for d in details)
    outcomes = [d["meta_judge"] for d in details if "meta_judge" in d]
    if outcomes:
        out["judgement_pairs"] = len(kinds) - len(answers)
        out["no_judgement_pair"] = {r: outcomes.count(r) for r in sorted(set(outcomes)) if r != "pair"}
    return out
