"""A DeepSpeed engine's whole training state as plain data, and back: what a train checkpoint
(dlma_ray.workers.training) must hold for a resumed round to be the round it resumed.

The state is the optimizer object DeepSpeed chose, through its own `state_dict()` / `load_state_dict()`:
ZeRO-1/2 (`DeepSpeedZeroOptimizer`: this rank's fp32 master partition `single_partition_of_fp32_groups`
and the base optimizer's moments over it), ZeRO-1 in bf16 (`BF16_Optimizer`), ZeRO-3
(`DeepSpeedZeroOptimizer_Stage3`: `fp32_flat_groups`, the base optimizer's state; taken through the call
that puts the fp32 partitions back into the base optimizer's param groups, which ZeRO-3 empties outside
its step), no ZeRO with fp16/bf16 (`FP16_Optimizer`, `FP16_UnfusedOptimizer`: fp32 masters) and no ZeRO
in fp32 (the torch optimizer itself). Loading asks DeepSpeed for the fp32 masters from the state
(`load_from_fp32_weights`), never rebuilt from the 16-bit weights, which would drop every update below
half a bf16 ulp. The loss scaler object becomes its class name and attributes (no pickle); the
parameter-fragment maps (for DeepSpeed's universal checkpoints, rebuilt at load) are left out. The
engine's step counters and the RNG state travel too, so dropout draws continue where they stopped.
"""

from __future__ import annotations

import os
from typing import Any

SCALERS = ("LossScaler", "DynamicLossScaler")  # the loss scaler classes a state may name
_LISTED = ("BF16_Optimizer", "DeepSpeedZeroOptimizer", "DeepSpeedZeroOptimizer_Stage3")  # load a per-rank list
_MASTERS = ("FP16_Optimizer", "FP16_UnfusedOptimizer")  # load one dict, masters included


def state_name(rank: int) -> str:
    """The checkpoint file stem of rank `rank`'s state (<stem>.safetensors + <stem>.json)."""
    return f"zero_rank{rank}"


def _plain_scaler(scaler) -> dict:
    attrs = {}
    for k, v in vars(scaler).items():
        attrs[k] = {"dtype": str(v).removeprefix("torch.")} if type(v).__name__ == "dtype" else v
    return {"class": type(scaler).__name__, "attrs": attrs}


def _build_scaler(plain: dict):
    import torch
    from deepspeed.runtime.fp16 import loss_scaler

    if plain["class"] not in SCALERS:
        raise ValueError(f"a checkpoint names the loss scaler {plain['class']!r}; expected one of {SCALERS}")
    scaler = object.__new__(getattr(loss_scaler, plain["class"]))
    for k, v in plain["attrs"].items():
        setattr(scaler, k, getattr(torch, v["dtype"]) if isinstance(v, dict) and set(v) == {"dtype"} else v)
    return scaler


def zero_state(engine) -> dict[str, Any]:
    """This rank's optimizer state (fp32 masters, moments, loss scaler), step counters and RNG: plain data
    (tensors, dicts, lists, numbers, strings) that dlma_ray.model.checkpoint.save_state writes without pickle."""
    import torch

    opt = engine.optimizer
    state = dict(opt.state_dict())
    state.pop("param_slice_mappings", None)  # fragment objects for universal checkpoints; rebuilt at load
    if "loss_scaler" in state:
        state["loss_scaler"] = _plain_scaler(state["loss_scaler"])
    if "zero_stage" in state:
        state["zero_stage"] = int(state["zero_stage"])  # an int Enum
    rng = {"cpu": torch.get_rng_state()}
    if engine.device.type == "cuda":
        rng["device"] = torch.cuda.get_rng_state(engine.device)
    return {"kind": type(opt).__name__, "optimizer": state, "rng": rng,
            "steps": {k: int(getattr(engine, k)) for k in ("global_steps", "global_samples", "skipped_steps")}}


def restore_zero_state(engine, state: dict[str, Any]) -> None:
    """`state` (from zero_state on the same rank of an engine built the same way) back into `engine`:
    after it, the engine's next step is the step the saved engine would have taken."""
    import torch
    import torch.distributed as dist

    opt = engine.optimizer
    kind = type(opt).__name__
    if state["kind"] != kind:
        raise RuntimeError(f"the checkpoint holds the state of a {state['kind']} and this run's DeepSpeed built a "
                           f"{kind}: train.zero_stage or train.precision changed since it was written")
    saved = dict(state["optimizer"])
    if "loss_scaler" in saved:
        saved["loss_scaler"] = _build_scaler(saved["loss_scaler"])
    if kind in _LISTED:  # indexed by data-parallel rank; only this rank's entry is read (rigid checkpoints)
        world = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        opt.load_state_dict([saved if r == rank else None for r in range(world)], load_optimizer_states=True,
                            load_from_fp32_weights=True)
    elif kind in _MASTERS:
        opt.load_state_dict(saved, load_optimizer_states=True)
    else:
        opt.load_state_dict(saved)
    for k, v in state["steps"].items():
        setattr(engine, k, v)
    torch.set_rng_state(state["rng"]["cpu"].cpu())
    if "device" in state["rng"] and engine.device.type == "cuda":
        torch.cuda.set_rng_state(state["rng"]["device"].cpu(), engine.device)


def save_training_state(engine, scheduler, folder: str, rank: int, adapter_only: bool) -> None:
    """Call on every rank: this rank's zero_state into <folder>/zero_rank<r>.*; rank 0 also the weights (the
    adapter only with LoRA: the frozen base is the round's start) and the lr schedule."""
    from dlma_ray.model.checkpoint import save_state

    save_state(zero_state(engine), folder, state_name(rank))
    weights = None
    if engine.zero_optimization_partition_weights():  # ZeRO-3: a collective, every rank takes part
        weights = engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=adapter_only)
    if rank == 0:
        module = engine.module
        module.save_pretrained(folder, state_dict=weights if weights is not None else module.state_dict(),
                               safe_serialization=True)
        save_state(scheduler.state_dict(), folder, "scheduler")


def restore_training_state(engine, scheduler, folder: str, rank: int, round_k: int | str = "<k>") -> None:
    """The optimizer state, counters and lr schedule of save_training_state back, on an engine built from
    the checkpoint's weights (or, with LoRA, the round's start wrapped with the checkpoint's adapter).

    A checkpoint of dlma-ray before this module holds the torch optimizer's state alone (optimizer_rank<r>):
    in fp32 without ZeRO-3 that is everything (the fp32 weights are the masters) and it resumes; in
    bf16/fp16 its masters are gone, so it is refused rather than resumed as a different round."""
    from dlma_ray.model.checkpoint import load_state

    if os.path.exists(os.path.join(folder, state_name(rank) + ".json")):
        restore_zero_state(engine, load_state(folder, state_name(rank), str(engine.device)))
    elif os.path.exists(os.path.join(folder, LEGACY_NAME.format(rank=rank) + ".json")):
        _restore_legacy(engine, folder, rank, round_k)
    else:
        raise FileNotFoundError(f"{folder}: no optimizer state of rank {rank} ({state_name(rank)}.json)")
    scheduler.load_state_dict(load_state(folder, "scheduler"))


LEGACY_NAME = "optimizer_rank{rank}"  # the torch optimizer's state only, as checkpoints held it before


def _restore_legacy(engine, folder: str, rank: int, round_k) -> None:
    from dlma_ray.model.checkpoint import load_state

    why = None
    if engine.zero_optimization_stage() == 3:
        why = "its ZeRO-3 optimizer state is not one DeepSpeed can load"
    elif engine.bfloat16_enabled() or engine.fp16_enabled():
        why = "it kept no fp32 master weights: resumed in 16 bits, every update below half an ulp would be lost"
    if why:
        raise RuntimeError(f"{folder} is a train checkpoint of an older dlma-ray and cannot resume this round: "
                           f"{why}. Redo the round's training from its start: rerun with "
                           f"--restart-from round_{round_k}/train")
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO-1/2 wrap the torch optimizer
    inner.load_state_dict(load_state(folder, LEGACY_NAME.format(rank=rank), str(engine.device)))
