"""The round loop: generate -> score -> train -> evaluate, R times, resumable stage by stage.

    round k, policy pi_k:
      generate  Ray Data over vLLM engine actors      -> <run>/round_k/generations/  (Parquet)
      score     Ray Data over scorer actors            -> <run>/round_k/pairs/        (Parquet, PAIR_SCHEMA)
      train     Ray Train TorchTrainer + DeepSpeed     -> <run>/round_k/policy/       (HF folder) = pi_{k+1}
      evaluate  Ray tasks (dlma_ray.stages.evaluate)          -> <run>/round_k/eval.json

The method (`train.method`, dlma_ray.methods) says how each stage is done; this loop only orders them, and
keeps evaluate(k)'s vLLM engines (pi_{k+1}) for generate(k+1) (dlma_ray.workers.engines).

Every stage writes under a temporary name, renames into place, then records itself in
`<run>/state.json`; a rerun skips what is recorded there. Actor pools end with their stage, so the
same CPUs/GPUs serve every stage in turn (the kept engines hold GPUs, never CPUs, from evaluate(k) to
generate(k+1)).
"""

from __future__ import annotations

import logging
import os
import time

from dlma_ray import methods
from dlma_ray.core import storage
from dlma_ray.workers import phases, telemetry
from dlma_ray.run import tracking
from dlma_ray.workers import trainlog
from dlma_ray.config.tree import Config
from dlma_ray.config.interfaces import StageResult
from dlma_ray.run.layout import RunLayout
from dlma_ray.workers.engines import KeptEngines, room_beside_scorers
from dlma_ray.stages.round import Round, initial_model, model_for_actor
from dlma_ray.stages.pools import pool_size
from dlma_ray.stages.ray_session import init_ray
from dlma_ray.run.state import STAGES, RunState, stage_key

log = logging.getLogger("dlma_ray")


def run_stage(method: methods.Method, stage: str, r: Round) -> StageResult:
    """One stage of one round, as the method does it."""
    return getattr(method, stage)(r)


def run(cfg: Config, restart_from: tuple[int, str] | None = None,
        stop_after: tuple[int, str] | None = None) -> RunState:
    """Run (or resume) every round of ``cfg``, holding the run directory's lock; returns the final run state.
    ``restart_from`` (round, stage): redo the run from that stage on with this config (`--restart-from`);
    ``stop_after`` (round, stage): stop once that stage is recorded (`--stop-after`)."""
    from dlma_ray.run.lock import run_lock

    method = methods.check(cfg)  # a bad method name or setting fails before any work
    run = RunLayout(storage.absolute(cfg.run.dir))
    with run_lock(run.root):
        return _run_rounds(cfg, run, method, restart_from, stop_after)


def output_intact(run: RunLayout, entry: dict) -> bool:
    """Is a recorded stage's output still there, whole? Tables must hold the rows recorded. The path is the
    layout's, not the one recorded: a run directory that was moved or copied keeps its finished stages."""
    out = run.round(entry["round"]).output(entry["stage"])
    if not storage.exists(out):
        return False
    if entry["stage"] in ("generate", "score"):
        import pyarrow.dataset as pds

        try:
            return pds.dataset(storage.absolute(out), format="parquet").count_rows() == entry["rows"]
        except (OSError, ValueError):
            return False
    if entry["stage"] == "train":
        return storage.exists(storage.join(out, "config.json"))
    return True


def stages_to_do(cfg: Config, run: RunLayout, restart_from: tuple[int, str] | None = None
         ) -> tuple[RunState, list[tuple[int, str]]]:
    """The run's state, checked against what is on disk, and the (round, stage) pairs still to do, in order."""
    # Another method's section (rlaif.margin for a dlma run) shapes none of this run's stages.
    unused = tuple(f"{name}." for name in methods.names() if name != cfg.train.method and hasattr(cfg, name))
    state = RunState.open(run.root, cfg.to_dict(), restart_from, unused)
    if restart_from is not None:  # a redone train stage must not resume from a checkpoint of the old config
        for k in range(restart_from[0], cfg.rounds.count):
            if not state.done(k, "train"):
                storage.delete_dir(run.round(k).train_scratch)
    broken = next((e for e in state.stages if not output_intact(run, e)), None)
    if broken is not None:  # every later stage was built on it: redo from there
        log.warning("round %d: %s's output %s is missing or does not hold the %d rows recorded: redoing it and "
                    "every stage after it", broken["round"], broken["stage"], run.round(broken["round"]).output(
                        broken["stage"]), broken["rows"])
        state.truncate(state.stages.index(broken))
    return state, [(k, s) for k in range(cfg.rounds.count) for s in stages_of(cfg) if not state.done(k, s)]


def _run_rounds(cfg: Config, run: RunLayout, method: methods.Method, restart_from: tuple[int, str] | None,
                stop_after: tuple[int, str] | None = None) -> RunState:
    import psutil  # Ray's own dependency

    run_dir = run.root
    job_started = round(psutil.Process().create_time(), 3)  # the report's glue: what happens outside stages
    state, pending = stages_to_do(cfg, run, restart_from)
    if stop_after is not None:
        stop = stop_point(cfg, stop_after)
        pending = [p for p in pending if stage_key(p) <= stage_key(stop)]
        if not pending:
            log.info("run %s has already done round_%d/%s (--stop-after): nothing to do", run_dir, *stop)
            return state
    if not pending:
        log.info("run %s already finished all %d rounds: nothing to do", run_dir, cfg.rounds.count)
        return state
    done = len(state.stages)
    if done:
        log.info("resuming %s at round %d, stage %s (%d stages already done)", run_dir, *pending[0], done)
    tracking.check_available(cfg.run.trackers)  # tracking: a missing library fails now, not after a stage
    record_phases(run_dir)
    init_ray(cfg)
    kept = None  # engines kept from evaluate(k) for generate(k+1) (dlma_ray.workers.engines)
    try:
        for k, stage in pending:
            if stage == "evaluate" and keeps_engines(cfg, method, k, pending):
                kept = KeptEngines.start(cfg, model_for_actor(run.round(k).policy), engine_count(cfg))
            elif stage == "generate" and kept is None and answers_baseline_on_generate(cfg, method, k, pending):
                kept = KeptEngines.start(cfg, initial_model(cfg), engine_count(cfg))
            _run_one(cfg, run, method, state, Round(cfg, run, k, kept), stage, job_started)
            if stage == "generate" and kept is not None:
                kept.release()
                kept = None
    finally:
        if kept is not None:
            kept.release()
    write_run_report(run_dir)
    return state


def _run_one(cfg: Config, run: RunLayout, method: methods.Method, state: RunState, r: Round, stage: str,
             job_started: float) -> None:
    """Run one stage and record it in the run's state; a round's last stage also writes its model card."""
    k = r.k
    storage.remove_stale_temps(r.paths.dir)
    log.info("round %d: %s (%s) ...", k, stage, method.name)
    telemetry.set_gauge("dlma_current_round", k)
    telemetry.set_gauge("dlma_stage_running", 1, stage=stage)
    start = time.time()
    try:
        result = run_stage(method, stage, r)
        baseline = baseline_from(cfg, run, r) if stage == "generate" else None
    finally:
        telemetry.set_gauge("dlma_stage_running", 0, stage=stage)
    seconds = time.time() - start
    telemetry.set_gauge("dlma_stage_seconds", seconds, round=k, stage=stage)
    summary = dict(result.summary, **({"baseline_answers": baseline} if baseline else {}))
    if r.engines is not None and stage in ("evaluate", "generate"):
        summary["kept_engines"] = len(r.engines.hosts)
    spans = phases.collect(os.environ[phases.ENV], start, start + seconds) if os.environ.get(phases.ENV) else None
    state.record(k, stage, result.output, result.rows, seconds, started=round(start, 3), job_started=job_started,
                 **({"metrics": summary} if summary else {}), **({"phases": spans} if spans else {}))
    log.info(stage_line(k, stage, result, seconds))
    if stage == stages_of(cfg)[-1]:  # the round is finished: its policy gets a model card, the trackers its measures
        from dlma_ray.views.modelcard import write_card_quietly

        write_card_quietly(run.root, k)
        trainlog.log_finished_round(cfg, run.root, state, k)


def stop_point(cfg: Config, stop_after: tuple[int, str]) -> tuple[int, str]:
    """``stop_after`` checked against the run: a round it has and a stage its rounds run (a ValueError naming
    what is allowed otherwise)."""
    k, stage = stop_after
    if k >= cfg.rounds.count or stage not in stages_of(cfg):
        raise ValueError(f"--stop-after 'round_{k}/{stage}': this run has rounds 0..{cfg.rounds.count - 1} and the "
                         f"stages {', '.join(stages_of(cfg))}")
    return stop_after


def record_phases(run_dir: str) -> None:
    """Where each stage's time goes (dlma_ray.workers.phases): the processes of a Ray this job starts inherit
    $DLMA_PHASES_DIR and record their start-up there, under <run>/.phases."""
    import ray

    if not ray.is_initialized() and not storage.is_uri(run_dir):
        os.environ[phases.ENV] = os.path.join(run_dir, ".phases")


def answers_baseline_on_generate(cfg: Config, method: methods.Method, k: int, pending: list[tuple[int, str]]) -> bool:
    """Run round 0's generate stage on kept pi_0 engines, so that evaluation's pi_0 answers come from them too
    (`baseline_from`): one pi_0 engine start a run instead of two, the same answers (per-request seeds)."""
    return (k == 0 and cfg.eval.enabled and cfg.resources.keep_engines and method.generates_on_engines
            and any(s == "evaluate" for _, s in pending))


def baseline_from(cfg: Config, run: RunLayout, r: Round) -> int:
    """After a generate stage on kept pi_0 engines: pi_0's evaluation answers from them, cached in the run
    directory (baseline.answer_baseline); the time counts in the generate stage. Returns how many were made."""
    if r.engines is None or not cfg.eval.enabled or not r.engines.serves(r.initial):
        return 0
    from dlma_ray.model.loading import load_tokenizer
    from dlma_ray.stages.baseline import answer_baseline
    from dlma_ray.stages.evaluate import load_eval_prompts

    prompts = load_eval_prompts(cfg, load_tokenizer(r.initial, cfg.model.trust_remote_code))
    return answer_baseline(cfg, r.engines, run.baseline_answers, prompts)


def keeps_engines(cfg: Config, method: methods.Method, k: int, pending: list[tuple[int, str]]) -> bool:
    """Keep evaluate(k)'s engines for generate(k+1)? Only when that stage runs in this job, samples on engines,
    and the cluster has room for evaluation's scorers beside them (`engines.room_beside_scorers`)."""
    import ray

    if not (cfg.resources.keep_engines and method.generates_on_engines and (k + 1, "generate") in pending):
        return False
    if room_beside_scorers(cfg.resources, engine_count(cfg), ray.cluster_resources()):
        return True
    log.info("round %d: not keeping the evaluation's engines for round %d: the cluster has no room for a scorer "
             "beside them (resources.keep_engines)", k, k + 1)
    return False


def engine_count(cfg: Config) -> int:
    """How many engines the generate stage would start (`resources.num_engines`, fitted to the cluster)."""
    res = cfg.resources
    return pool_size("engines", res.num_engines, res.cpus_per_engine, res.gpus_per_engine, dict(res.engine_resources))


def stage_line(k: int, stage: str, result: StageResult, seconds: float) -> str:
    """A finished stage in one line: rows in, rows kept, rows dropped by reason, seconds, where it went."""
    rows_in = result.summary.get("rows_in", result.rows)
    dropped = result.summary.get("dropped") or {}
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(dropped.items()))
    return (f"round {k}: {stage} done: {rows_in} rows in, {result.rows} kept, "
            f"{sum(dropped.values())} dropped{f' ({reasons})' if reasons else ''}, {seconds:.1f} s -> {result.output}")


def stages_of(cfg: Config) -> tuple[str, ...]:
    return STAGES if cfg.eval.enabled else tuple(s for s in STAGES if s != "evaluate")


def write_run_report(run_dir: str) -> None:
    """The report is a view of finished work: a plotting problem must not fail a finished run."""
    from dlma_ray.views.report import write_report

    try:
        log.info("report: %s", write_report(run_dir))
    except Exception:  # noqa: BLE001
        log.exception("could not write the report; run `python -m dlma_ray.views.report %s` to retry", run_dir)
