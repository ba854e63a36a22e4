"""Train stage: the round's training rows -> Ray Train `TorchTrainer` (DeepSpeed per worker, the method's
loss) -> round_k/policy/ = pi_{k+1}. The worker loop is dlma_ray.workers.training; it never names a method."""

from __future__ import annotations

import logging
from typing import Protocol

from dlma_ray.core import storage
from dlma_ray.workers import trainlog
from dlma_ray.config.interfaces import LossFn, StageResult, TrainLoopConfig
from dlma_ray.stages.round import Round

log = logging.getLogger("dlma_ray")


class Trainable(Protocol):
    """What training needs of a method."""

    name: str
    unit: str  # what a training row is: "pairs", or "prompts" (Self-Contrast: k pairs a row)
    loss: LossFn

    def training_rows(self, ds): ...

    def train_options(self, cfg) -> dict: ...


def optimizer_steps(rows: int, micro_batch_size: int, global_batch_size: int, workers: int, epochs: int) -> int:
    """Optimizer steps of a round: every worker takes rows // workers, in whole micro-batches and whole steps."""
    micro_per_step = global_batch_size // (micro_batch_size * workers)
    return (rows // workers) // micro_batch_size // micro_per_step * epochs


def lost_actor(error: BaseException) -> bool:
    """Whether Ray Train gave up because an actor's node went away outside the steps it retries itself: a node
    lost while the worker group launches its train function or shuts down surfaces as a ControllerError (Ray
    2.60 retries those only at worker-group startup), though the same loss mid-step is retried."""
    from ray.exceptions import RayActorError
    from ray.train import ControllerError

    return isinstance(error, ControllerError) and isinstance(error.controller_failure, RayActorError)


def fit_retrying_lost_nodes(make_trainer, max_failures: int, k: int):
    """`make_trainer().fit()`, refitted up to `max_failures` times when a node was lost (`lost_actor`); each new
    trainer resumes from the run name's latest checkpoint, as a resubmitted job does."""
    for attempt in range(max_failures + 1):
        try:
            return make_trainer().fit()
        except Exception as e:
            if not lost_actor(e) or attempt == max_failures:
                raise
            log.warning("round %d: training lost a node outside a step (%s); refitting from the latest checkpoint "
                        "(%d of train.max_failures=%d)", k, str(e).splitlines()[-1][:200], attempt + 1, max_failures)


def fit(r: Round, method: Trainable) -> StageResult:
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from dlma_ray.workers.sharding import ingest_config, seeded_order
    from dlma_ray.workers.training import train_loop_per_worker

    train, res = r.cfg.train, r.cfg.resources
    ds = ray.data.read_parquet(r.paths.pairs).filter(lambda row: row["split"] == "train")
    # Rows are regrouped (if the method does) BEFORE the shuffle and the shard split, so a group can only
    # ever land in one micro-batch on one worker.
    # A seeded order that depends only on the rows' content: the same optimizer steps for any number of
    # workers and any order the score stage wrote the rows in (dlma_ray.workers.sharding).
    ds = seeded_order(method.training_rows(ds), train.seed + r.k)
    n_train = ds.count()
    total_steps = optimizer_steps(n_train, train.micro_batch_size, train.global_batch_size, res.num_train_workers,
                                  train.epochs)
    if total_steps < 1:
        raise ValueError(f"round {r.k} has {n_train} training {method.unit}, fewer than one optimizer step needs "
                         f"(train.global_batch_size={train.global_batch_size}); use more prompts or a smaller batch")
    log.info("round %d: %s training on %d %s, %d optimizer steps of %d %s", r.k, method.name, n_train, method.unit,
             total_steps, train.global_batch_size, method.unit)
    loop_config: TrainLoopConfig = dict(
        train={**vars(train), **method.train_options(r.cfg)}, loss=method.loss, policy_path=r.policy,
        total_steps=total_steps, round=r.k,
        threads=res.threads_for(res.cpus_per_train_worker), use_gpu=res.use_gpu_for_training,
        trust_remote_code=r.cfg.model.trust_remote_code,
        tracking=trainlog.train_spec(r.cfg, r.run.root, r.k))  # tracking: train rank 0 logs each optimizer step
    scratch = r.paths.train_scratch
    trainer = lambda: TorchTrainer(  # noqa: E731  (a fresh trainer per attempt, all under one run name)
        train_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=res.num_train_workers, use_gpu=res.use_gpu_for_training,
                                     resources_per_worker={"CPU": res.cpus_per_train_worker,
                                                           **res.train_worker_resources}),
        datasets={"train": ds}, dataset_config=ingest_config(),
        # A fixed name: a resubmitted job finds this round's latest checkpoint under it and resumes from it.
        run_config=RunConfig(name="train", storage_path=storage.absolute(scratch),
                             failure_config=FailureConfig(max_failures=train.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    result = fit_retrying_lost_nodes(trainer, train.max_failures, r.k)
    metrics = dict(result.metrics or {})
    if "nonfinite_step" in metrics:
        kept = f"; the last good checkpoint is kept in {scratch}" if result.checkpoint else ""
        raise FloatingPointError(f"round {r.k}: the training loss became NaN/inf at optimizer step "
                                 f"{metrics['nonfinite_step']}{kept}. Lower train.lr, raise train.beta or check the "
                                 "pairs (their log-probs are in round_<k>/pairs)")
    if result.checkpoint is None or metrics.get("done") is not True:
        raise RuntimeError(f"round {r.k}: training finished without a policy checkpoint")
    src = result.checkpoint.path
    if storage.is_uri(r.run.root):
        src = f"{r.run.root.split('://', 1)[0]}://{src}"
    storage.commit_dir(src, r.paths.policy)
    storage.delete_dir(scratch)
    return StageResult(r.paths.policy, n_train, metrics)
