"""What the trackers receive: each optimizer step under TRL's metric names, and each finished round.

Per optimizer step (train rank 0, step = optimizer steps since round 0 began; TRL's names where TRL has one):

    loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/chosen, logps/rejected,
    learning_rate, grad_norm, num_tokens, epoch; DLMA's own: self_reward/raw, self_reward/clipped, h;
    pairs_per_second, tokens_per_second

Per round (the driver, step = the round index): eval/<measure> with eval/<measure>/low, /high, /n for every
measure of round_<k>/eval.json, and stage/<stage>/rows, stage/<stage>/seconds for each of the round's stages.
"""

from __future__ import annotations

import json
import logging
import os
import time

from dlma_ray.core import storage
from dlma_ray.run import tracking
from dlma_ray.run.layout import RunLayout

log = logging.getLogger("dlma_ray")

# The train loop's report keys (dlma_ray.core.losses, dlma_ray.workers.training) -> the names TRL's DPOTrainer logs.
TRL_NAMES = {
    "loss": "loss",
    "rewards_chosen": "rewards/chosen",
    "rewards_rejected": "rewards/rejected",
    "reward_margin": "rewards/margins",
    "reward_accuracy": "rewards/accuracies",
    "logps_chosen": "logps/chosen",
    "logps_rejected": "logps/rejected",
    "lr": "learning_rate",
    "grad_norm": "grad_norm",
    "num_tokens": "num_tokens",
    "epoch": "epoch",
    "self_reward_raw": "self_reward/raw",
    "self_reward_clipped": "self_reward/clipped",
    "h": "h",
}


def trl_step_metrics(report: dict, rows_per_step: int) -> dict[str, float]:
    """One optimizer step's tracker dict from the train loop's report (after `StepLogger.update`): TRL's names,
    plus pairs/s and tokens/s over the step's wall time (`seconds`; `step_tokens` input tokens, all workers)."""
    out = {TRL_NAMES[k]: float(v) for k, v in report.items() if k in TRL_NAMES and v is not None}
    seconds = report.get("seconds")
    if seconds:
        out["pairs_per_second"] = rows_per_step / seconds
        if report.get("step_tokens") is not None:
            out["tokens_per_second"] = report["step_tokens"] / seconds
    return out


def progress_text(report: dict, rows_per_step: int) -> str:
    """The training bar's text for one optimizer step: loss, reward margin (when the method has pairs), pairs/s."""
    parts = [f"loss {report['loss']:.4f}"]
    if report.get("reward_margin") is not None:
        parts.append(f"margin {report['reward_margin']:+.3f}")
    if report.get("seconds"):
        parts.append(f"{rows_per_step / report['seconds']:.2f} pairs/s")
    return ", ".join(parts)


def step_offsets(run_dir: str, k: int) -> tuple[int, int]:
    """(optimizer steps, input tokens) of the train stages of rounds before k recorded in state.json, so that
    round k's steps and token count continue where round k-1's ended."""
    path = RunLayout(run_dir).state
    if not storage.exists(path):
        return 0, 0
    entries = [e for e in json.loads(storage.read_text(path)).get("stages", [])
               if e.get("stage") == "train" and e.get("round", k) < k]
    return (sum(int(e.get("metrics", {}).get("step", 0)) for e in entries),
            sum(int(e.get("metrics", {}).get("num_tokens", 0)) for e in entries))


def run_name(run_dir: str) -> str:
    """The trackers' name of a run: its directory's last part."""
    return os.path.basename(run_dir.rstrip("/")) or "run"


def train_spec(cfg, run_dir: str, k: int) -> dict:
    """The `tracking` entry of the train loop's config for round k (a plain dict: it travels to the workers)."""
    steps, tokens = step_offsets(run_dir, k)
    return {"names": list(cfg.run.trackers), "dir": run_dir, "run_name": run_name(run_dir),
            "config": cfg.to_dict(), "round": k, "step_offset": steps, "token_offset": tokens}


class StepLogger:
    """The train loop's tracking around one DeepSpeed ``engine``. It counts the input tokens (attention mask,
    no padding) of every forward through the model, whatever the method's loss (with `train.packing` the
    tokens of the packed row: a context shared by y+ and y- is forwarded, and counted, once); every rank calls `update` at
    each optimizer step (the token total is summed across workers there); only rank 0 with a `tracking` spec
    opens trackers and logs."""

    def __init__(self, spec: dict | None, rank: int, engine, rows_per_step: int, metrics_path: str = "",
                 total_steps: int = 0):
        spec = spec or {}
        self.engine, self.rows, self.round = engine, rows_per_step, spec.get("round", 0)
        self.step_offset, self.tokens = int(spec.get("step_offset", 0)), int(spec.get("token_offset", 0))
        resumed = 0
        if metrics_path and os.path.exists(metrics_path):  # a retry resumed from a checkpoint: its step and count
            with open(metrics_path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
            if lines:
                last = json.loads(lines[-1])
                resumed, self.tokens = int(last.get("step", 0)), int(last.get("num_tokens", self.tokens))
        self.local_tokens = 0
        self.hook = engine.module.register_forward_pre_hook(self._count, with_kwargs=True)
        self.trackers = None
        if rank == 0 and spec.get("names"):
            # start_step: TensorBoard drops what a killed attempt logged from that step on (it is logged again)
            self.trackers = tracking.open_trackers(spec["names"], spec["dir"], spec["run_name"], spec["config"],
                                                   job_type=f"train-round-{spec.get('round', 0)}",
                                                   start_step=self.step_offset + resumed + 1)
        self.bar = None
        if rank == 0 and total_steps:  # the driver draws it under Ray Data's bars (ray.experimental.tqdm_ray)
            from ray.experimental.tqdm_ray import tqdm

            # flush every change: steps are seconds apart, and a throttled bar would show the text of the step before
            self.bar = tqdm(total=total_steps, desc=f"round {spec.get('round', 0)} train", unit="step",
                            flush_interval_s=0)
            self.bar.update(resumed)
        self.last = time.perf_counter()

    def _count(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is not None and mask.dim() == 2:  # a padded batch: its real tokens
            self.local_tokens += int(mask.sum())
        elif ids is not None:  # no mask, or a packed row (train.packing: one row, no padding, a 4D mask)
            self.local_tokens += int(ids.numel())

    def update(self, report: dict) -> None:
        """Complete ``report`` in place: `num_tokens` (running total, all workers), `step_tokens`, `seconds` since
        the previous step, and DeepSpeed's `grad_norm` before clipping (None under ZeRO stage 0 in fp32:
        DeepSpeed computes none there, and none is logged). Collective: every rank calls it at every step."""
        now = time.perf_counter()
        step_tokens = int(_sum_across_workers(self.local_tokens, self.engine.device))
        self.local_tokens = 0
        self.tokens += step_tokens
        report.update(num_tokens=self.tokens, step_tokens=step_tokens, seconds=now - self.last)
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            report["grad_norm"] = float(grad_norm)
        self.last = now
        if self.bar is not None:
            self.bar.set_description(f"round {self.round} train | {progress_text(report, self.rows)}")
            self.bar.update(1)
        if self.trackers is not None:
            self.trackers.log(trl_step_metrics(report, self.rows), self.step_offset + int(report["step"]))

    def close(self) -> None:
        self.hook.remove()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


def _sum_across_workers(value: float, device) -> float:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    summed = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return summed.item()


def round_metrics(measures: dict, stages: list[dict]) -> dict[str, float]:
    """eval/<name> (value), /low, /high, /n for every measure; stage/<stage>/rows and /seconds."""
    from dlma_ray.evaluation.measures import value

    out: dict[str, float] = {}
    for name, summary in measures.items():
        v = value(summary)
        if v is None:
            continue
        out[f"eval/{name}"] = v
        lo, hi = (summary.get("ci95") or [None, None])[:2]
        if lo is not None and hi is not None:
            out[f"eval/{name}/low"], out[f"eval/{name}/high"] = lo, hi
        if summary.get("n") is not None:
            out[f"eval/{name}/n"] = summary["n"]
    for e in stages:
        out[f"stage/{e['stage']}/rows"] = e["rows"]
        out[f"stage/{e['stage']}/seconds"] = e["seconds"]
    return out


def log_round(trackers, round_index: int, eval_measures: dict, stage_summaries: list[dict]) -> None:
    """Log a finished round: eval.json's `measures` and the round's state.json stage entries."""
    trackers.log(round_metrics(eval_measures or {}, stage_summaries), round_index)


def log_finished_round(cfg, run_dir: str, state, k: int) -> None:
    """The driver's call once round k's last stage is recorded: opens the trackers, logs, closes. Never fails
    the run (the round's work is done and recorded): a tracker problem is logged."""
    if not cfg.run.trackers:
        return
    try:
        eval_path = RunLayout(run_dir).round(k).eval_json
        measures = json.loads(storage.read_text(eval_path)).get("measures", {}) if storage.exists(eval_path) else {}
        with tracking.open_trackers(cfg.run.trackers, run_dir, run_name(run_dir), cfg.to_dict()) as t:
            log_round(t, k, measures, [e for e in state.stages if e["round"] == k])
    except Exception:  # the round's work is recorded: a tracker problem must not fail the run
        log.exception("round %d: could not log the round to the trackers %s", k, cfg.run.trackers)
