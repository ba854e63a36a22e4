"""Score stage: round_k/generations/ -> scorer actors (dlma_ray.workers.scoring.PairScorer) -> round_k/pairs/."""

from __future__ import annotations

from dlma_ray.config.interfaces import StageResult
from dlma_ray.stages.round import Round
from dlma_ray.stages.pools import map_actors, scorer_pool, write_scored


def pairs(r: Round, mode: str, ds=None) -> StageResult:
    """Score ``ds`` (default: the round's generations) in ``mode`` (contrastive, reference or none) and write
    the kept rows as the pairs table; the summary counts what was dropped and why."""
    import ray.data

    ds = ray.data.read_parquet(r.paths.generations) if ds is None else ds
    result = write_scored(map_actors(ds, scorer_pool(r, mode)), r)
    # Which model produced ref_logp_* (pi_k, or pi_0 with rounds.reference=initial), recorded in state.json.
    result.summary["reference"] = r.reference if mode != "none" else None
    return result
