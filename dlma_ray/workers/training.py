"""The train worker: runs inside each Ray Train worker (dlma_ray.stages.train starts them), one DeepSpeed
engine each, the loss handed in by the method (`config["loss"]`, dlma_ray.methods): this loop never names one.

The reference log-probs were computed by the scorer and travel in the pairs table, so no
reference model sits in training memory. Workers read the round's Parquet through their Ray Data
shard; every optimizer step reports its metrics through `ray.train.report`; the final policy is an
HF folder (safetensors + tokenizer) reported as the run's checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np

from dlma_ray.model import lora
from dlma_ray.workers import phases, telemetry
from dlma_ray.config.interfaces import TrainLoopConfig
from dlma_ray.run.layout import TRAIN_METRICS_FILE
from dlma_ray.workers.sharding import worker_micro_batches
from dlma_ray.workers.trainlog import StepLogger


def deepspeed_config(train: dict, num_workers: int) -> dict:
    """DeepSpeed's JSON config from the `train` section."""
    accum = train["global_batch_size"] // (train["micro_batch_size"] * num_workers)
    if accum < 1 or accum * train["micro_batch_size"] * num_workers != train["global_batch_size"]:
        raise ValueError(f"train.global_batch_size ({train['global_batch_size']}) must be a multiple of "
                         f"train.micro_batch_size x resources.num_train_workers "
                         f"({train['micro_batch_size']} x {num_workers})")
    zero = {"stage": train["zero_stage"]}
    if train["zero_stage"] == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    extra = {}
    if train["precision"] == "bf16":
        if train["zero_stage"] == 0:  # DeepSpeed 0.19 refuses fp32 accumulation without ZeRO ("unsupported mix")
            raise ValueError("train.precision=bf16 needs train.zero_stage 1, 2 or 3: without ZeRO DeepSpeed sums "
                             "gradients in bf16, which drops micro-batches' small contributions")
        # A bf16 sum of gradients drops every term below half an ulp of the sum: over micro-batches (ZeRO-2/3
        # then keep fp32 partition buffers; ZeRO-1 becomes DeepSpeed's BF16_Optimizer, fp32 gradients) and
        # over ranks (the reduction in fp32: twice the bytes of a bf16 one)
        extra["data_types"] = {"grad_accum_dtype": "fp32"}
        extra["communication_data_type"] = "fp32"
    return {
        "train_batch_size": train["global_batch_size"],
        "train_micro_batch_size_per_gpu": train["micro_batch_size"],
        "gradient_accumulation_steps": accum,
        "gradient_clipping": train["grad_clip"] if train["grad_clip"] > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": train["precision"] == "bf16"},
        "fp16": {"enabled": train["precision"] == "fp16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        **extra,
    }


def lr_lambda(warmup: int, total: int, schedule: str):
    """Multiplier of the peak lr at optimizer step s: linear warm-up, then constant/linear/cosine."""
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def make_optimizer(params, train: dict):
    import torch

    if train["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=train["lr"], weight_decay=train["weight_decay"])
    if train["optimizer"] == "rmsprop":
        return torch.optim.RMSprop(params, lr=train["lr"], weight_decay=train["weight_decay"])
    return torch.optim.SGD(params, lr=train["lr"], weight_decay=train["weight_decay"])


def mean_across_workers(values: dict[str, float], device) -> dict[str, float]:
    """Every worker's metric values averaged. The tensor lives on the worker's own device: NCCL (GPU
    training) accepts no CPU tensor; gloo takes the CPU one."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    summed = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return {k: v / dist.get_world_size() for k, v in zip(keys, summed.tolist())}


def train_loop_per_worker(config: TrainLoopConfig) -> None:
    """Runs on every Ray Train worker: one DeepSpeed engine over this worker's shard of pairs.

    Every `train.checkpoint_every` optimizer steps the workers report a checkpoint (dlma_ray.model.checkpoint);
    a retry after a worker failure, or a resubmitted job, starts from the latest one, not from step 0."""
    from dlma_ray.workers.devices import use_deepspeed_accelerator

    phases.process_started()
    use_deepspeed_accelerator(config["use_gpu"])  # before DeepSpeed looks for a GPU this worker was not given
    with phases.phase("import"):
        import deepspeed
    import ray.train
    import torch

    from dlma_ray.model.loading import load_for_training, load_tokenizer

    train = config["train"]
    torch.set_num_threads(config["threads"])
    torch.manual_seed(train["seed"])
    if not config["use_gpu"]:
        # The CPU shared-memory all-reduce op is JIT-compiled on first use (minutes); gloo needs no op.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    resume = _resume_point(ray.train.get_checkpoint(), world)
    use_lora = lora.enabled(train)  # the base stays the round's starting policy; a checkpoint holds the adapter
    start = resume["dir"] if resume and not use_lora else config["policy_path"]

    tokenizer = load_tokenizer(start, config["trust_remote_code"])
    # in the training precision; under ZeRO-3 built already partitioned (dlma_ray.model.loading.load_for_training)
    with phases.phase("model_load"):
        model = load_for_training(start, train["precision"], deepspeed_config(train, world),
                                  config["trust_remote_code"])
    if train["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    if use_lora:
        model = lora.wrap(model, train, adapter_from=resume["dir"] if resume else None)
    optimizer = make_optimizer(lora.trainable(model), train)  # with LoRA the adapters only
    total_steps = config["total_steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train["warmup_steps"], total_steps,
                                                                       train["lr_schedule"]))
    with phases.phase("train_setup"):
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=deepspeed_config(train, world), dist_init_required=False)
    accum = engine.gradient_accumulation_steps()
    shard = ray.train.get_dataset_shard("train")  # the whole ordered table: sharding.worker_micro_batches
    per_epoch = (total_steps // train["epochs"]) * accum  # this worker's micro-batches of one epoch
    metrics_path = os.path.join(tempfile.mkdtemp(prefix="dlma-metrics-"), TRAIN_METRICS_FILE)
    step, start_epoch, skip = 0, 0, 0
    if resume:
        step, start_epoch, skip = _restore(engine, scheduler, resume, rank, metrics_path, config["round"])
    window, report, done = [], {}, step * accum  # done: micro-batches trained, for the accumulation boundary
    # tracking (dlma_ray.workers.trainlog): rank 0 logs every optimizer step with TRL's names; a no-op elsewhere
    steplog = StepLogger(config.get("tracking"), rank, engine, train["global_batch_size"], metrics_path,
                         total_steps)  # and the training progress bar
    for epoch in range(start_epoch, train["epochs"]):
        micro = 0  # micro-batches read in this epoch
        for rows in worker_micro_batches(shard, train["micro_batch_size"], rank, world, per_epoch):
            if step >= total_steps:
                break
            micro += 1
            if epoch == start_epoch and micro <= skip:
                continue  # trained before the checkpoint this run resumed from
            loss, m = config["loss"](engine, tokenizer, rows, train, engine.device)
            finite = mean_across_workers({"finite": float(torch.isfinite(loss))}, engine.device)["finite"]
            if finite < 1.0:  # every rank stops at the same step: a lone rank leaving would hang the others
                if rank == 0:
                    print(f"non-finite loss at step {step + 1} (epoch {epoch}): stopping the round", flush=True)
                ray.train.report({"nonfinite_step": step + 1, "epoch": epoch})
                steplog.close()  # tracking
                return
            engine.backward(loss)
            engine.step()
            done += 1
            window.append({k: float(v) for k, v in m.items()})
            if done % accum == 0:
                step += 1
                report = mean_across_workers({k: float(np.mean([w[k] for w in window])) for k in window[0]},
                                             engine.device)
                report.update(step=step, epoch=epoch, lr=scheduler.get_last_lr()[0])
                steplog.update(report)  # tracking: tokens, grad norm, pairs/s (every rank: it sums the tokens)
                window = []
                if rank == 0:
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps(report) + "\n")
                    telemetry.set_gauge("dlma_train_loss", report["loss"], round=config["round"])
                    if "reward_margin" in report:  # not for context distillation (no pairs)
                        telemetry.set_gauge("dlma_train_reward_margin", report["reward_margin"], round=config["round"])
                    telemetry.inc("dlma_train_steps_total", 1, round=config["round"])
                every = train["checkpoint_every"]
                if every and step % every == 0 and step < total_steps:
                    _report_checkpoint(engine, tokenizer, scheduler, train, rank, world, metrics_path, report,
                                       dict(step=step, epoch=epoch, micro=micro))
                else:
                    ray.train.report(report)
    steplog.close()  # tracking
    with phases.phase("save"):
        _save_policy(engine, tokenizer, train, rank, metrics_path, {**report, "step": step, "done": True}, config)


def _resume_point(checkpoint, world: int) -> dict | None:
    """The progress of the checkpoint a retry starts from, with its local folder; None to start fresh."""
    if checkpoint is None:
        return None
    from dlma_ray.model.checkpoint import read_progress

    folder = checkpoint.to_directory()  # a local copy, also when the run directory is on an object store
    progress = read_progress(folder)
    if progress is None:
        return None
    if progress["world"] != world:
        raise RuntimeError(f"the checkpoint at step {progress['step']} was written by {progress['world']} train "
                           f"workers, this run has {world}: its optimizer shards do not fit. Use "
                           f"resources.num_train_workers={progress['world']} to resume it")
    return {**progress, "dir": folder}


def _restore(engine, scheduler, resume: dict, rank: int, metrics_path: str, round_k=None) -> tuple[int, int, int]:
    """Optimizer state (fp32 masters included), lr schedule and logged steps back from a checkpoint; (step,
    epoch, micro-batches to skip)."""
    import shutil

    from dlma_ray.model.zerostate import restore_training_state

    folder = resume["dir"]
    restore_training_state(engine, scheduler, folder, rank, "<k>" if round_k is None else round_k)
    if rank == 0 and os.path.exists(os.path.join(folder, TRAIN_METRICS_FILE)):
        shutil.copy(os.path.join(folder, TRAIN_METRICS_FILE), metrics_path)
    print(f"rank {rank}: resuming from the checkpoint at step {resume['step']} (epoch {resume['epoch']})", flush=True)
    return resume["step"], resume["epoch"], resume["micro"]


def _report_checkpoint(engine, tokenizer, scheduler, train: dict, rank: int, world: int, metrics_path: str,
                       report: dict, progress: dict) -> None:
    """Every rank writes its whole optimizer state (dlma_ray.model.zerostate: fp32 masters, moments, counters, RNG);
    rank 0 the weights (the adapter only with LoRA), the schedule, the progress and the metrics."""
    import shutil

    import ray.train
    from ray.train import Checkpoint

    from dlma_ray.model.checkpoint import write_progress
    from dlma_ray.model.zerostate import save_training_state

    out = tempfile.mkdtemp(prefix="dlma-ckpt-")
    save_training_state(engine, scheduler, out, rank, adapter_only=lora.enabled(train))  # a collective under ZeRO-3
    if rank == 0:
        tokenizer.save_pretrained(out)
        write_progress(out, world=world, **progress)
        shutil.copy(metrics_path, os.path.join(out, TRAIN_METRICS_FILE))
    ray.train.report({**report, "checkpoint_step": progress["step"]}, checkpoint=Checkpoint.from_directory(out))
    shutil.rmtree(out, ignore_errors=True)


def _save_policy(engine, tokenizer, train: dict, rank: int, metrics_path: str, final: dict, config=None) -> None:
    import shutil

    import ray.train
    from ray.train import Checkpoint

    out = write_policy(engine, tokenizer, train, rank, config["policy_path"], config["trust_remote_code"])
    if out is None:
        ray.train.report(final)
        return
    if os.path.exists(metrics_path):
        shutil.copy(metrics_path, os.path.join(out, TRAIN_METRICS_FILE))
    ray.train.report(final, checkpoint=Checkpoint.from_directory(out))


def write_policy(engine, tokenizer, train: dict, rank: int, policy_path: str, trust_remote_code: bool = False):
    """The trained policy as an HF folder, on rank 0 (its path; None on the others). Collective: every rank
    calls it (ZeRO-3 gathers). With LoRA only the adapters are gathered (their float32 masters) and merged on
    rank 0 onto the round's stored starting policy `policy_path`, in float32 (dlma_ray.model.lora says why)."""
    use_lora = lora.enabled(train)
    adapters = lora.trained_adapters(engine.module) if use_lora else None
    state = engine._zero3_consolidated_16bit_state_dict() if train["zero_stage"] == 3 and not use_lora else None
    if rank != 0:
        return None
    out = tempfile.mkdtemp(prefix="dlma-policy-")
    if use_lora:  # the merged model is the policy; the adapter goes into <policy>/adapter/
        lora.save_policy(policy_path, train, adapters, out, tokenizer, trust_remote_code)
    else:
        module = engine.module
        module.save_pretrained(out, state_dict=state if state is not None else module.state_dict(),
                               safe_serialization=True)
        tokenizer.save_pretrained(out)
    return out
