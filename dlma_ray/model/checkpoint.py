"""Training state saved without pickle: every tensor of a nested state (an optimizer's `state_dict()`, say)
goes into a safetensors file, everything else into a JSON skeleton that points at them. Loading builds the
same nesting back; nothing from a run folder is ever unpickled.

A train checkpoint (dlma_ray.workers.training) is a folder:
    config.json, model.safetensors, tokenizer files   the policy at that step (an HF folder: rank 0; with LoRA
                                                       adapter_config.json + adapter_model.safetensors only)
    progress.json                                      step, epoch, micro-batches done in that epoch, world size
    zero_rank<r>.safetensors / .json                   rank r's whole DeepSpeed optimizer state: fp32 master
                                                       partition, moments, loss scaler, step counters, RNG
                                                       (dlma_ray.model.zerostate; optimizer_rank<r>: the older format)
    scheduler.safetensors / .json                      the lr schedule
    train_metrics.jsonl                                the steps logged so far
"""

from __future__ import annotations

import json
import os
from typing import Any

PROGRESS_FILE = "progress.json"


def _split(obj: Any, prefix: str, tensors: dict) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        key = prefix or "value"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_split(k, "", {}) if not isinstance(k, (str, int)) else k,
                              _split(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot save a {type(obj).__name__} at {prefix!r} without pickle")


def _join(obj: Any, tensors: dict) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: _join(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, dict) and "__list__" in obj:
        items = [_join(v, tensors) for v in obj["__list__"]]
        return tuple(items) if obj.get("tuple") else items
    return obj


def save_state(state: Any, folder: str, name: str) -> None:
    """``state`` as <folder>/<name>.safetensors (its tensors) and <folder>/<name>.json (the rest)."""
    from safetensors.torch import save_file

    tensors: dict = {}
    skeleton = _split(state, "", tensors)
    save_file(tensors, os.path.join(folder, f"{name}.safetensors"))
    with open(os.path.join(folder, f"{name}.json"), "w") as fh:
        json.dump(skeleton, fh)


def load_state(folder: str, name: str, device: str = "cpu") -> Any:
    from safetensors.torch import load_file

    tensors = load_file(os.path.join(folder, f"{name}.safetensors"), device=device)
    with open(os.path.join(folder, f"{name}.json")) as fh:
        return _join(json.load(fh), tensors)


def write_progress(folder: str, **progress) -> None:
    with open(os.path.join(folder, PROGRESS_FILE), "w") as fh:
        json.dump(progress, fh)


def read_progress(folder: str) -> dict | None:
    """A train checkpoint's progress, or None for a folder that is a finished policy (no progress file)."""
    path = os.path.join(folder, PROGRESS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)
