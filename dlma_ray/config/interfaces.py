"""The contracts between layers: what a stage returns, what a method's loss looks like, what a train
worker receives. Types only; nothing here does work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

import numpy as np

Batch = dict[str, np.ndarray]  # one micro-batch of table rows, column -> values (Ray Data's numpy format)


@dataclass(frozen=True)
class StageResult:
    """What every stage hands back to the round loop, which records it in state.json."""

    output: str  # the committed path (table folder, policy folder or eval.json)
    rows: int  # rows written (pairs, prompts, answers)
    summary: dict[str, Any] = field(default_factory=dict)  # stored under `metrics` in state.json


class LossFn(Protocol):
    """A method's loss over one micro-batch: (loss, detached 0-d metric tensors by name)."""

    def __call__(self, model: Any, tokenizer: Any, rows: Batch, train: dict[str, Any], device: Any) -> tuple[Any, dict]:
        ...


class TrainLoopConfig(TypedDict):
    """What each Ray Train worker receives (`train_loop_config`)."""

    train: dict[str, Any]  # the `train` config section as a dict, plus the method's `train_options`
    loss: LossFn
    policy_path: str
    total_steps: int
    round: int
    threads: int
    use_gpu: bool
    trust_remote_code: bool
    tracking: dict[str, Any]  # dlma_ray.workers.trainlog.train_spec: the trackers train rank 0 logs to ({}: none)
