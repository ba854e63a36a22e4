"""The round loop: generate -> score -> train, R times, resumable stage by stage.

    round k, policy pi_k:
      generate  Ray Data over vLLM engine actors      -> <run>/round_k/generations/  (Parquet)
      score     Ray Data over scorer actors            -> <run>/round_k/pairs/        (Parquet, PAIR_SCHEMA)
      train     Ray Train TorchTrainer + DeepSpeed     -> <run>/round_k/policy/       (HF folder) = pi_{k+1}
      evaluate  Ray tasks (dlma_ray.evaluate)          -> <run>/round_k/eval.json

Every method (`train.method`) runs these same stages; what differs lives in the stage runners, which
hand over to dlma_ray.methods (dpo's generate stage reads human pairs, context distillation's score stage
scores nothing) and dlma_ray.self_contrast (N samples; its score stage embeds, filters, then scores).

Every stage writes under a temporary name, renames into place, then records itself in
`<run>/state.json`; a rerun skips what is recorded there. Actor pools end with their stage, so the
same CPUs/GPUs serve every stage in turn.
"""

from __future__ import annotations

import logging
import time

from dlma_ray import metrics, storage
from dlma_ray.config import Config
from dlma_ray.prompts import pair_from_config
from dlma_ray.schema import GENERATION_SCHEMA
from dlma_ray.stages import (
    custom_resources, init_ray, model_for_actor, policy_for_round, pool_size, prompt_rows, round_dir, scorer_stage,
    write_scored, write_table,
)
from dlma_ray.state import RunState

log = logging.getLogger("dlma_ray")
STAGES = ("generate", "score", "train", "evaluate")


def run_generate(cfg: Config, run_dir: str, k: int) -> tuple[str, int]:
    import ray.data

    from dlma_ray.generate import GenerationEngine

    if cfg.train.method == "dpo":
        from dlma_ray.methods import run_human_pairs

        return run_human_pairs(cfg, run_dir, k)
    if cfg.train.method == "self_contrast":
        from dlma_ray import self_contrast

        return self_contrast.run_generate(cfg, run_dir, k)

    out = storage.join(round_dir(run_dir, k), "generations")
    r = cfg.resources
    ds = ray.data.from_items(prompt_rows(cfg, k)).map_batches(
        GenerationEngine,
        fn_constructor_kwargs=dict(
            model_path=model_for_actor(policy_for_round(cfg, run_dir, k)),
            pair=pair_from_config(cfg.pair.name, cfg.pair.positive, cfg.pair.negative), style=cfg.pair.style,
            gen=vars(cfg.generation), round_index=k, tensor_parallel_size=r.tensor_parallel_size,
            trust_remote_code=cfg.model.trust_remote_code, torch_threads=r.threads_for(r.cpus_per_engine)),
        batch_size=cfg.generation.batch_size,
        concurrency=pool_size("engines", r.num_engines, r.cpus_per_engine, r.gpus_per_engine, r.engine_resources),
        num_cpus=r.cpus_per_engine, num_gpus=r.gpus_per_engine, **custom_resources(r.engine_resources))
    return out, write_table(ds, GENERATION_SCHEMA, out)


def scoring_mode(method: str) -> str:
    """What the score stage computes for a method (dlma_ray.score): R only where the loss reads it."""
    from dlma_ray.methods import CONTRASTIVE_SCORING, UNSCORED

    return "contrastive" if method in CONTRASTIVE_SCORING else "none" if method in UNSCORED else "reference"


def run_score(cfg: Config, run_dir: str, k: int) -> tuple:
    import ray.data

    if cfg.train.method == "self_contrast":
        from dlma_ray import self_contrast

        return self_contrast.run_score(cfg, run_dir, k)  # + a summary of kept / dropped prompts

    src = storage.join(round_dir(run_dir, k), "generations")
    out = storage.join(round_dir(run_dir, k), "pairs")
    ds = scorer_stage(ray.data.read_parquet(src), cfg, run_dir, k, scoring_mode(cfg.train.method))
    return (out, *write_scored(ds, out, k))


def run_train(cfg: Config, run_dir: str, k: int) -> tuple[str, int, dict]:
    import ray.data
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from dlma_ray.sharding import ingest_config, seeded_order
    from dlma_ray.train import train_loop_per_worker

    t, r = cfg.train, cfg.resources
    pairs = storage.join(round_dir(run_dir, k), "pairs")
    ds = ray.data.read_parquet(pairs).filter(lambda row: row["split"] == "train")
    unit = "pairs"
    if t.method == "self_contrast":
        # One row per prompt, its k negatives as lists, BEFORE the shuffle and the shard split: a prompt's
        # k pairs can then only ever be in one micro-batch on one worker, hence in one optimizer step.
        from dlma_ray.self_contrast import training_dataset

        ds, unit = training_dataset(ds, ds.count()), "prompts"
    ds = seeded_order(ds, t.seed + k)  # the same optimizer steps for any number of workers (dlma_ray.sharding)
    n_train = ds.count()
    per_step = t.micro_batch_size * r.num_train_workers
    steps_per_epoch = (n_train // r.num_train_workers) // t.micro_batch_size // (t.global_batch_size // per_step)
    total_steps = steps_per_epoch * t.epochs
    if total_steps < 1:
        raise ValueError(f"round {k} has {n_train} training {unit}, fewer than one optimizer step needs "
                         f"(train.global_batch_size={t.global_batch_size}); use more prompts or a smaller batch")
    log.info("round %d: %s training on %d %s, %d optimizer steps of %d %s", k, t.method, n_train, unit,
             total_steps, t.global_batch_size, unit)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=dict(train=vars(t), threads=r.threads_for(r.cpus_per_train_worker), method=t.method,
                               total_steps=total_steps, round=k,
                               policy_path=model_for_actor(policy_for_round(cfg, run_dir, k)),
                               use_gpu=r.use_gpu_for_training, trust_remote_code=cfg.model.trust_remote_code),
        scaling_config=ScalingConfig(num_workers=r.num_train_workers, use_gpu=r.use_gpu_for_training,
                                     resources_per_worker={"CPU": r.cpus_per_train_worker,
                                                           **r.train_worker_resources}),
        datasets={"train": ds}, dataset_config=ingest_config(),
        run_config=RunConfig(name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
                             storage_path=storage.absolute(storage.join(round_dir(run_dir, k), ".ray_train")),
                             failure_config=FailureConfig(max_failures=0)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"round {k}: training finished without a policy checkpoint")
    out = storage.join(round_dir(run_dir, k), "policy")
    src = result.checkpoint.path
    if storage.is_uri(run_dir):
        src = f"{run_dir.split('://', 1)[0]}://{src}"
    storage.commit_dir(src, out)
    storage.delete_dir(storage.join(round_dir(run_dir, k), ".ray_train"))
    return out, n_train, dict(result.metrics or {})


def run(cfg: Config) -> RunState:
    """Run (or resume) every round of ``cfg``, holding the run directory's lock; returns the final run state."""
    from dlma_ray.runlock import run_lock

    run_dir = storage.absolute(cfg.run.dir)
    with run_lock(run_dir):
        return _run_rounds(cfg, run_dir)


def output_intact(entry: dict) -> bool:
    """Is a recorded stage's output still there, whole? Tables must hold the rows recorded."""
    out = entry.get("output", "")
    if not out or not storage.exists(out):
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


def _run_rounds(cfg: Config, run_dir: str) -> RunState:
    state = RunState.open(run_dir, cfg.to_dict())
    broken = next((e for e in state.stages if not output_intact(e)), None)
    if broken is not None:  # every later stage was built on it: redo from there
        log.warning("round %d: %s's output %s is missing or does not hold the %d rows recorded: redoing it and "
                    "every stage after it", broken["round"], broken["stage"], broken["output"], broken["rows"])
        state.truncate(state.stages.index(broken))
    pending = [(k, s) for k in range(cfg.rounds.count) for s in stages_of(cfg) if not state.done(k, s)]
    if not pending:
        log.info("run %s already finished all %d rounds: nothing to do", run_dir, cfg.rounds.count)
        return state
    done = len(state.stages)
    if done:
        log.info("resuming %s at round %d, stage %s (%d stages already done)", run_dir, *pending[0], done)
    init_ray(cfg)
    from dlma_ray.evaluate import run_evaluate

    runners = {"generate": run_generate, "score": run_score, "train": run_train, "evaluate": run_evaluate}
    for k, stage in pending:
        storage.remove_stale_temps(round_dir(run_dir, k))
        log.info("round %d: %s ...", k, stage)
        metrics.set_gauge("dlma_current_round", k)
        metrics.set_gauge("dlma_stage_running", 1, stage=stage)
        start = time.time()
        try:
            out, rows, *extra = runners[stage](cfg, run_dir, k)
        finally:
            metrics.set_gauge("dlma_stage_running", 0, stage=stage)
        seconds = time.time() - start
        metrics.set_gauge("dlma_stage_seconds", seconds, round=k, stage=stage)
        state.record(k, stage, out, rows, seconds, **({"metrics": extra[0]} if extra else {}))
        log.info("round %d: %s done: %d rows in %.1fs -> %s", k, stage, rows, seconds, out)
    write_run_report(run_dir)
    return state


def stages_of(cfg: Config) -> tuple[str, ...]:
    return STAGES if cfg.eval.enabled else tuple(s for s in STAGES if s != "evaluate")


def write_run_report(run_dir: str) -> None:
    """The report is a view of finished work: a plotting problem must not fail a finished run."""
    from dlma_ray.report import write_report

    try:
        log.info("report: %s", write_report(run_dir))
    except Exception:  # noqa: BLE001
        log.exception("could not write the report; run `python -m dlma_ray.report %s` to retry", run_dir)
