"""Ray Data actor pools sized to the cluster (`ActorPool`, `map_actors`): the engines and scorers a stage maps its
rows through, and its tables written under a temporary name and renamed into place."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from dlma_ray.core import storage
from dlma_ray.workers.engines import ENGINE_RUNTIME_ENV
from dlma_ray.config.interfaces import StageResult
from dlma_ray.core.schema import PAIR_SCHEMA, conform
from dlma_ray.stages.round import Round

log = logging.getLogger("dlma_ray")


def fitting_pool_size(requested: int, cpus: float, gpus: float, cluster_cpus: float, cluster_gpus: float,
                      reserve_cpus: float = 1.0, custom: dict | None = None, cluster_custom: dict | None = None) -> int:
    """How many actors of a stage's pool to start: at most ``requested``, and no more than the cluster holds
    while ``reserve_cpus`` stay free for Ray Data's read and write tasks (a pool holding every CPU leaves its
    own input unread: the stage waits forever). ``custom`` are the custom resources one actor needs
    (`resources.*_resources`), ``cluster_custom`` the cluster's totals. Raises when not even one actor fits."""
    fits = [requested]
    for name, amount in (custom or {}).items():
        if amount > 0:
            fits.append(int((cluster_custom or {}).get(name, 0.0) // amount))
    if cpus > 0:
        fits.append(int((cluster_cpus - reserve_cpus) // cpus))
    if gpus > 0:
        fits.append(int(cluster_gpus // gpus))
    size = min(fits)
    if size < 1:
        extra = "".join(f", {v:g} {name} (cluster: {(cluster_custom or {}).get(name, 0.0):g})"
                        for name, v in (custom or {}).items())
        raise RuntimeError(f"an actor needing {cpus:g} CPU and {gpus:g} GPU{extra} cannot be placed beside the "
                           f"{reserve_cpus:g} CPU Ray Data needs for reading and writing: the cluster has "
                           f"{cluster_cpus:g} CPU and {cluster_gpus:g} GPU; lower resources.cpus_per_* / gpus_per_* "
                           "or start nodes with the custom resources (`ray start --resources=...`)")
    return size


def pool_size(name: str, requested: int, cpus: float, gpus: float, custom: dict | None = None) -> int:
    """``fitting_pool_size`` against the running cluster, said in the log when it shrinks the pool."""
    import ray

    total = ray.cluster_resources()
    size = fitting_pool_size(requested, cpus, gpus, total.get("CPU", 0.0), total.get("GPU", 0.0),
                             custom=custom, cluster_custom=total)
    if size < requested:
        log.warning("%s: %d actors requested, %d fit beside Ray Data's read/write tasks (cluster: %g CPU, %g GPU)",
                    name, requested, size, total.get("CPU", 0.0), total.get("GPU", 0.0))
    return size


def write_table(ds, schema, out: str) -> int:
    """Write a Ray dataset as Parquet under a temporary name, rename it into place, count its rows."""
    import ray.data

    tmp = storage.temp_sibling(out)
    ds.map_batches(lambda t: conform(t, schema), batch_format="pyarrow", batch_size=None).write_parquet(tmp)
    storage.commit_dir(tmp, out)
    return ray.data.read_parquet(out).count()


@dataclass(frozen=True)
class ActorPool:
    """A pool of Ray Data actors of one callable class: what to build, how many, what each reserves."""

    name: str  # for the log, e.g. "engines"
    cls: type
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    size: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    batch_size: int = 32
    max_restarts: int = 3  # a killed actor is restarted this often and its unfinished batches redone
    resources: Mapping[str, float] = field(default_factory=dict)  # custom Ray resources (placement by label)
    runtime_env: Mapping[str, Any] = field(default_factory=dict)  # merged with the job's (engines: generate.py)


def map_actors(ds, pool: ActorPool):
    """``ds`` mapped through ``pool``, its size fitted to the cluster (``pool_size``). A killed actor (its
    process or its node gone) is restarted by Ray and its batches are retried, up to ``max_restarts`` times,
    so a crash that repeats fails the stage instead of looping."""
    return ds.map_batches(pool.cls, fn_constructor_kwargs=dict(pool.kwargs), batch_size=pool.batch_size,
                          concurrency=pool_size(pool.name, pool.size, pool.cpus, pool.gpus, dict(pool.resources)),
                          num_cpus=pool.cpus, num_gpus=pool.gpus, max_restarts=pool.max_restarts,
                          max_task_retries=pool.max_restarts, **custom_resources(pool.resources),
                          **({"runtime_env": dict(pool.runtime_env)} if pool.runtime_env else {}))


def custom_resources(needs: Mapping[str, float]) -> dict:
    """Ray remote args for custom resources (none: no argument, Ray's default)."""
    return {"resources": dict(needs)} if needs else {}


def engine_pool(r: Round, engine: type, batch_size: int | None = None, **extra) -> ActorPool:
    """vLLM engine actors (dlma_ray.workers.generation) loading pi_k, with the run's prompt pair and sampling settings.
    With engines kept for pi_k (``r.engines``) the actors drive those instead: each reserves the CPU its engine
    works on, as an engine actor would, while the GPUs stay with the kept engines."""
    res, cfg = r.cfg.resources, r.cfg
    kept = r.engines if r.engines is not None and r.engines.serves(r.policy) else None
    kwargs = dict(model_path=r.policy, pair=cfg.pair.prompt_pair(), style=cfg.pair.style, gen=vars(cfg.generation),
                  round_index=r.k, tensor_parallel_size=res.tensor_parallel_size,
                  trust_remote_code=cfg.model.trust_remote_code, torch_threads=res.threads_for(res.cpus_per_engine),
                  **({"engine_hosts": kept.hosts} if kept else {}), **extra)
    if kept:
        log.info("round %d: generate on the %d vLLM engine(s) kept %s", r.k, len(kept.hosts),
                 "for pi_0's evaluation answers" if r.k == 0 else "from the evaluation")
        return ActorPool("engines", engine, kwargs, len(kept.hosts), res.cpus_per_engine, 0.0,
                         batch_size or cfg.generation.batch_size, res.max_actor_restarts)
    return ActorPool("engines", engine, kwargs, res.num_engines, res.cpus_per_engine, res.gpus_per_engine,
                     batch_size or cfg.generation.batch_size, res.max_actor_restarts, res.engine_resources,
                     ENGINE_RUNTIME_ENV)


def scorer_pool(r: Round, mode: str) -> ActorPool:
    """Scorer actors (dlma_ray.workers.scoring.PairScorer) of round k: pi_k for R, the round's reference for ref_logp_*."""
    from dlma_ray.workers.scoring import PairScorer

    cfg, res = r.cfg, r.cfg.resources
    kwargs = dict(policy_path=r.policy, reference_path=r.reference, dtype=cfg.scoring.dtype,
                  batch_size=cfg.scoring.batch_size, padding_side=cfg.scoring.padding_side,
                  max_length=cfg.train.max_length, mode=mode, unfinished=cfg.scoring.unfinished,
                  pack_tokens=cfg.scoring.pack_tokens, trust_remote_code=cfg.model.trust_remote_code,
                  torch_threads=res.threads_for(res.cpus_per_scorer))
    return ActorPool("scorers", PairScorer, kwargs, res.num_scorers, res.cpus_per_scorer, res.gpus_per_scorer,
                     max(cfg.scoring.batch_size, 32), res.max_actor_restarts, res.scorer_resources)


def write_scored(ds, r: Round) -> StageResult:
    """Count the scorer's drop reasons, write the kept rows as the round's pairs table."""
    ds = ds.materialize()
    flags = ds.select_columns(["drop_reason", "chosen_finished", "rejected_finished"]).to_pandas()
    kept = flags[flags.drop_reason == ""]
    summary = {"rows_in": len(flags), "kept": len(kept),
               "dropped": {str(k_): int(v) for k_, v in flags.drop_reason[flags.drop_reason != ""].value_counts().items()},
               "unfinished_kept": int((~(kept.chosen_finished & kept.rejected_finished)).sum())}
    log.info("round %d: score kept %d of %d pairs (dropped: %s; kept with a response cut at max_new_tokens, "
             "scored as a prefix: %d)", r.k, summary["kept"], summary["rows_in"], summary["dropped"] or "none",
             summary["unfinished_kept"])
    if not summary["kept"]:
        raise ValueError(f"round {r.k}: the score stage dropped every pair ({summary['dropped']}); raise "
                         "train.max_length or generation.max_new_tokens, or set scoring.unfinished=keep")
    out = r.paths.pairs
    return StageResult(out, write_table(ds.filter(lambda row: row["drop_reason"] == ""), PAIR_SCHEMA, out), summary)
