"""Train stage: Ray Train `TorchTrainer`, each worker one DeepSpeed engine, the method's loss (`batch_loss`):
DLMA (gamma 0 for rlcd / dpo), context distillation's SFT NLL, or Self-Contrast's grouped DPO.

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

from dlma_ray import metrics
from dlma_ray.logprobs import collate, encode_response, pad_id, sequence_logprobs, side_ids
from dlma_ray.losses import dlma_loss, grouped_dpo_loss, sft_loss
from dlma_ray.sharding import worker_micro_batches

METRICS_FILE = "train_metrics.jsonl"


def deepspeed_config(t: dict, num_workers: int) -> dict:
    """DeepSpeed's JSON config from the `train` section."""
    accum = t["global_batch_size"] // (t["micro_batch_size"] * num_workers)
    if accum < 1 or accum * t["micro_batch_size"] * num_workers != t["global_batch_size"]:
        raise ValueError(f"train.global_batch_size ({t['global_batch_size']}) must be a multiple of "
                         f"train.micro_batch_size x resources.num_train_workers "
                         f"({t['micro_batch_size']} x {num_workers})")
    zero = {"stage": t["zero_stage"]}
    if t["zero_stage"] == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_batch_size": t["global_batch_size"],
        "train_micro_batch_size_per_gpu": t["micro_batch_size"],
        "gradient_accumulation_steps": accum,
        "gradient_clipping": t["grad_clip"] if t["grad_clip"] > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": t["precision"] == "bf16"},
        "fp16": {"enabled": t["precision"] == "fp16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
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


def make_optimizer(params, t: dict):
    import torch

    if t["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])
    if t["optimizer"] == "rmsprop":
        return torch.optim.RMSprop(params, lr=t["lr"], weight_decay=t["weight_decay"])
    return torch.optim.SGD(params, lr=t["lr"], weight_decay=t["weight_decay"])


def pair_batch(tokenizer, rows: dict[str, np.ndarray], max_length: int, padding_side: str = "right"):
    """One padded batch of 2B sequences: the B chosen responses, then the B rejected ones, after the plain
    context, as the token ids the score stage scored (`logprobs.side_ids`)."""
    contexts = [str(c) for c in rows["plain_context"]] * 2
    responses = side_ids(tokenizer, rows, "chosen") + side_ids(tokenizer, rows, "rejected")
    return collate([encode_response(tokenizer, c, r, max_length) for c, r in zip(contexts, responses)],
                   pad_id(tokenizer), padding_side)


def batch_loss(model, tokenizer, rows: dict, t: dict, method: str, device="cpu"):
    """The loss of one micro-batch for ``method``, and its metrics (a dict of 0-d tensors).

    dlma / rlcd / dpo: rows are pairs, the DLMA loss (gamma 0 except for dlma: rlcd and dpo have no R).
    context_distillation: token-mean NLL of chosen (y+) after plain_context; the rejected side is unused.
    self_contrast: rows are prompts (dlma_ray.self_contrast.group_pairs); y* is encoded once, then each of
    the prompt's negatives: B + M sequences in one forward.
    """
    import torch

    def col(name, values=None):
        # torch.tensor copies: Ray's numpy batches are read-only, which torch.as_tensor warns about.
        return torch.tensor(np.asarray(rows[name] if values is None else values, dtype=np.float64),
                            dtype=torch.float32, device=device)

    if method == "context_distillation":
        batch = collate([encode_response(tokenizer, str(c), r, t["max_length"]) for c, r in
                         zip(rows["plain_context"], side_ids(tokenizer, rows, "chosen"))], pad_id(tokenizer))
        tokens = torch.tensor(batch.response_lengths, dtype=torch.float32, device=device)
        loss = sft_loss(sequence_logprobs(model, batch.to(device)), tokens)
        return loss, {"loss": loss.detach(), "tokens_per_response": tokens.mean()}
    if method == "self_contrast":
        from dlma_ray.self_contrast import expand_groups

        rejected, ref_rejected, group = expand_groups(tokenizer, rows)
        contexts = [str(c) for c in rows["plain_context"]]
        enc = [encode_response(tokenizer, c, r, t["max_length"])
               for c, r in zip(contexts, side_ids(tokenizer, rows, "chosen"))]
        enc += [encode_response(tokenizer, contexts[g], r, t["max_length"]) for g, r in zip(group, rejected)]
        logp = sequence_logprobs(model, collate(enc, pad_id(tokenizer)).to(device))
        n = len(contexts)
        return grouped_dpo_loss(logp[:n], logp[n:], col("ref_logp_chosen"), col(None, ref_rejected),
                                torch.as_tensor(group, device=device), beta=t["beta"])
    gamma = t["gamma"] if method == "dlma" else 0.0
    logp = sequence_logprobs(model, pair_batch(tokenizer, rows, t["max_length"]).to(device))
    n = len(rows["chosen"])
    return dlma_loss(logp[:n], logp[n:], col("ref_logp_chosen"), col("ref_logp_rejected"),
                     col("self_reward") if gamma else None, beta=t["beta"], gamma=gamma,
                     clip_low=t["clip_low"], clip_high=t["clip_high"])


def mean_across_workers(values: dict[str, float], device) -> dict[str, float]:
    """Every worker's metric values averaged. The tensor lives on the worker's own device: NCCL (GPU
    training) accepts no CPU tensor; gloo takes the CPU one."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: v / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker: one DeepSpeed engine over this worker's shard of pairs."""
    import deepspeed
    import ray.train
    import torch

    from dlma_ray.models import load_causal_lm, load_tokenizer

    t = config["train"]
    torch.set_num_threads(config["threads"])
    torch.manual_seed(t["seed"])
    if not config["use_gpu"]:
        # The CPU shared-memory all-reduce op is JIT-compiled on first use (minutes); gloo needs no op.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    tokenizer = load_tokenizer(config["policy_path"], config["trust_remote_code"])
    model = load_causal_lm(config["policy_path"], "float32", config["trust_remote_code"])
    model.train()
    if t["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    optimizer = make_optimizer(model.parameters(), t)
    total_steps = config["total_steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t["warmup_steps"], total_steps,
                                                                       t["lr_schedule"]))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(t, world), dist_init_required=False)
    accum = engine.gradient_accumulation_steps()
    shard = ray.train.get_dataset_shard("train")  # the whole ordered table: sharding.worker_micro_batches
    per_epoch = (total_steps // t["epochs"]) * accum  # this worker's micro-batches of one epoch
    metrics_path = os.path.join(tempfile.mkdtemp(prefix="dlma-metrics-"), METRICS_FILE)
    step, micro, window, report = 0, 0, [], {}
    for epoch in range(t["epochs"]):
        for rows in worker_micro_batches(shard, t["micro_batch_size"], rank, world, per_epoch):
            if step >= total_steps:
                break
            loss, m = batch_loss(engine, tokenizer, rows, t, config["method"], engine.device)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}, epoch {epoch} on rank "
                                         f"{rank}; the last good policy is kept. Lower train.lr or check the pairs.")
            engine.backward(loss)
            engine.step()
            micro += 1
            window.append({k: float(v) for k, v in m.items()})
            if micro % accum == 0:
                step += 1
                report = mean_across_workers({k: float(np.mean([w[k] for w in window])) for k in window[0]},
                                             engine.device)
                report.update(step=step, epoch=epoch, lr=scheduler.get_last_lr()[0])
                window = []
                if rank == 0:
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps(report) + "\n")
                    metrics.set_gauge("dlma_train_loss", report["loss"], round=config["round"])
                    if "reward_margin" in report:  # not for context distillation (no pairs)
                        metrics.set_gauge("dlma_train_reward_margin", report["reward_margin"], round=config["round"])
                    metrics.inc("dlma_train_steps_total", 1, round=config["round"])
                ray.train.report(report)
    _save_policy(engine, tokenizer, t, rank, metrics_path, {**report, "step": step, "done": True})


def _save_policy(engine, tokenizer, t: dict, rank: int, metrics_path: str, final: dict) -> None:
    import shutil

    import ray.train
    from ray.train import Checkpoint

    state = engine._zero3_consolidated_16bit_state_dict() if t["zero_stage"] == 3 else None  # all ranks
    if rank != 0:
        ray.train.report(final)
        return
    out = tempfile.mkdtemp(prefix="dlma-policy-")
    module = engine.module
    module.save_pretrained(out, state_dict=state if state is not None else module.state_dict(),
                           safe_serialization=True)
    tokenizer.save_pretrained(out)
    if os.path.exists(metrics_path):
        shutil.copy(metrics_path, os.path.join(out, METRICS_FILE))
    ray.train.report(final, checkpoint=Checkpoint.from_directory(out))
