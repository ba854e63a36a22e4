"""Which device a worker computes on: the GPUs Ray assigned to it, never the GPUs it can merely see.

Ray 2.60 no longer empties CUDA_VISIBLE_DEVICES for an actor or task that asked for no GPU, so
`torch.cuda.is_available()` is true in a 0-GPU scorer on a GPU node, and a model moved to "cuda" lands on
cuda:0 beside whatever Ray did reserve it for (an engine, another scorer). Every model-loading worker asks
`ray_device()` instead; a worker given no GPU never touches CUDA.

    ray_device()                    "cpu", or "cuda:<i>" for the first GPU Ray assigned to this process
    cuda_device(ids, visible)       the mapping itself: Ray's GPU ids -> torch's index under CUDA_VISIBLE_DEVICES
    use_deepspeed_accelerator(gpu)  DeepSpeed's accelerator fixed before it detects one by `torch.cuda`
"""

from __future__ import annotations

import os


def cuda_device(gpu_ids: list[str], visible: str | None) -> str:
    """The torch device of the first of ``gpu_ids`` (Ray's ids, i.e. physical ones), "cpu" when there are none.

    torch numbers the devices listed in CUDA_VISIBLE_DEVICES (``visible``) from 0: Ray sets it to the assigned
    ids (cuda:0 is then the first), unless RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES leaves it as it was."""
    if not gpu_ids:
        return "cpu"
    ids = [str(i) for i in gpu_ids]
    if visible is None or not visible.strip():
        return f"cuda:{min(int(i) for i in ids)}"  # every GPU of the node visible, numbered as Ray numbers them
    listed = [v.strip() for v in visible.split(",")]
    for index, v in enumerate(listed):  # the first assigned GPU in torch's order
        if v in ids:
            return f"cuda:{index}"
    raise RuntimeError(f"Ray assigned GPUs {ids} but CUDA_VISIBLE_DEVICES={visible!r} lists none of them")


def ray_device() -> str:
    """The device of the current Ray actor, task or train worker: "cpu" when Ray assigned it no GPU.

    Outside Ray (a benchmark or a notebook loading a model itself) nothing was reserved and the process owns
    what it sees: "cuda" when torch sees a GPU, else "cpu". A driver connected to Ray reserved none: "cpu"."""
    import ray

    if not ray.is_initialized():
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    return cuda_device(ids, os.environ.get("CUDA_VISIBLE_DEVICES"))


def use_deepspeed_accelerator(use_gpu: bool) -> str:
    """Fix DeepSpeed's accelerator for this process: "cpu" for a CPU train worker, else DeepSpeed's own choice.

    DeepSpeed picks "cuda" whenever `torch.cuda` sees a device (deepspeed/accelerator/real_accelerator.py),
    which a 0-GPU Ray Train worker on a GPU node now does. DS_ACCELERATOR decides before DeepSpeed is imported;
    if something imported it and chose already, its accelerator is replaced. Returns the accelerator's name."""
    if use_gpu:
        from deepspeed.accelerator import get_accelerator

        return get_accelerator().device_name()
    os.environ["DS_ACCELERATOR"] = "cpu"
    from deepspeed.accelerator import get_accelerator, set_accelerator

    if get_accelerator().device_name() != "cpu":
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

        set_accelerator(CPU_Accelerator())
    return get_accelerator().device_name()
