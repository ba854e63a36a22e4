"""Plumbing every stage shares, blind to the method: the `Round`, the prompt rows, actor pools sized to the
cluster (`ActorPool`, `map_actors`), tables written under a temporary name, Ray's start.

The stages (dlma_ray.stages.*) and the methods (dlma_ray.methods) build on these.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

from dataclasses import dataclass, field
from typing import Any, Mapping

from dlma_ray.core import storage
from dlma_ray.config.tree import Config
from dlma_ray.workers.engines import ENGINE_RUNTIME_ENV, KeptEngines
from dlma_ray.config.interfaces import StageResult
from dlma_ray.run.layout import RoundLayout, RunLayout
from dlma_ray.core.prompts import context_ids
from dlma_ray.core.schema import PAIR_SCHEMA, conform

log = logging.getLogger("dlma_ray")


@dataclass(frozen=True)
class Round:
    """One round of one run: the config, the run's paths and the round index k (pi_k is trained into pi_{k+1})."""

    cfg: Config
    run: RunLayout
    k: int
    # vLLM engines the pipeline keeps from evaluate(k-1) for this round's generate (dlma_ray.workers.engines); None: none
    engines: KeptEngines | None = None

    @property
    def paths(self) -> RoundLayout:
        return self.run.round(self.k)

    @property
    def initial(self) -> str:
        """pi_0 as an actor loads it: the configured model, pinned to `model.revision`."""
        return initial_model(self.cfg)

    @property
    def policy(self) -> str:
        """pi_k as an actor loads it: the configured model at round 0, else the policy trained in round k-1."""
        return self.initial if self.k == 0 else model_for_actor(self.run.round(self.k - 1).policy)

    @property
    def reference(self) -> str:
        """The DPO reference: pi_k (`rounds.reference: round_start`, the paper) or pi_0 (`initial`)."""
        return self.policy if self.cfg.rounds.reference == "round_start" else self.initial


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


def model_for_actor(ref: str) -> str:
    # `builtin:` references resolve inside each actor: every node converts and caches its own copy.
    # Hub names pass through; only an existing local path is made absolute for other processes.
    return storage.absolute(ref) if not ref.startswith("builtin:") and os.path.exists(ref) else ref


def initial_model(cfg: Config) -> str:
    """pi_0 for every loader (engines, scorers, trainers, judges): `model.path`, pinned to `model.revision`."""
    from dlma_ray.model.loading import pinned

    return model_for_actor(pinned(cfg.model.path, cfg.model.revision))


def stop_on_sigterm() -> None:
    """SIGTERM (`kill`, a scheduler, `ray job stop`) stops the driver as Ctrl-C does, its lock released and Ray shut
    down at exit; Ray's handler (set by `ray.init`, so this comes after it) aborted, leaving a local cluster's agents."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # Python runs handlers on the main thread
        return

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"stopped by signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)


def init_ray(cfg: Config) -> None:
    import ray

    if ray.is_initialized():
        return
    # `ray job submit` sets RAY_ADDRESS; without it the job starts its own Ray instead of joining
    # whatever cluster happens to run on the machine (`resources.ray_address=auto` joins one).
    address = cfg.resources.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    info = ray.init(address=address)
    stop_on_sigterm()
    from dlma_ray.workers.nodes import check_cluster

    check_cluster()  # two nodes on one host sharing a temp dir kill the job obscurely: say why, first
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = True
    # Ray 2.60's new Parquet reader lists files on a thread pool that can raise InterruptedError as a read
    # ends (a traceback in a healthy run); the established reader reads the same tables.
    context.use_datasource_v2 = False
    url = getattr(info, "dashboard_url", "") or ""
    url = f"http://{url}" if url and "://" not in url else url or "not running"
    log.info("Ray dashboard: %s (Jobs, Train and Data tabs show progress; the Metrics tab and each node's "
             "Prometheus endpoint carry the dlma_* metrics: generation tokens/s, pairs scored, R, loss, margin)",
             url)
