"""Generate stage: prompt rows -> vLLM engine actors -> round_k/generations/ (GENERATION_SCHEMA)."""

from __future__ import annotations

from dlma_ray.config.interfaces import StageResult
from dlma_ray.core.schema import GENERATION_SCHEMA
from dlma_ray.stages.common import Round, engine_pool, map_actors, prompt_rows, write_table


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
