"""The device of every model-loading worker comes from the GPUs Ray assigned it (`dlma_ray.workers.devices`).

Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for an actor given no GPU, so on a GPU node such an actor sees
every GPU. The Ray tests below run on a cluster started with two logical GPUs, and the 0-GPU actor plays that
GPU node: torch there reports two CUDA devices, and initialising CUDA raises. The scorer,
the sentence embedder, the evaluation's model loading, the engine's arguments and DeepSpeed's accelerator
built in that actor must all choose the CPU without touching CUDA. Actors given one logical GPU only compute
their device string (this machine has no GPU to put tensors on). The mapping from Ray's GPU ids to torch's, by
hand: tests/unit/workers/test_devices.py.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def test_a_worker_given_no_gpu_computes_on_the_cpu(cluster, tiny_model_dir):
    ray = cluster

    def build(model_dir):
        import torch

        def touched(*args, **kwargs):
            raise AssertionError("a worker given no GPU initialised CUDA")

        # this process now looks like a 0-GPU worker on a GPU node: CUDA visible, and any initialisation of
        # it (a tensor or model moved to "cuda", a CUDA call) raises instead of succeeding
        torch.cuda.is_available = lambda: True
        torch.cuda.device_count = lambda: 2
        torch.cuda._lazy_init = touched  # every first CUDA use goes through it, from Python or C++

        from dlma_ray.workers import eval_tasks
        from dlma_ray.config.tree import load_config
        from dlma_ray.workers.devices import ray_device, use_deepspeed_accelerator
        from dlma_ray.workers.embedding import SentenceEmbedder
        from dlma_ray.workers.engines import engine_kwargs
        from dlma_ray.workers.scoring import PairScorer

        cfg = load_config(None, [f"model.path={model_dir}"])
        scorer = PairScorer(model_dir, model_dir, mode="reference")
        model, _ = eval_tasks.load(model_dir, cfg)
        eval_tasks.free_memory()
        return dict(
            device=ray_device(), scorer=str(next(scorer.policy.parameters()).device),
            eval=str(next(model.parameters()).device), embedder=SentenceEmbedder().device,
            engine_claims_gpu="gpu_memory_utilization" in engine_kwargs(model_dir, vars(cfg.generation), 1, False),
            deepspeed=use_deepspeed_accelerator(False))

    got = ray.get(ray.remote(num_gpus=0, num_cpus=0, max_calls=1)(build).remote(tiny_model_dir))
    assert got == dict(device="cpu", scorer="cpu", eval="cpu", embedder="cpu", engine_claims_gpu=False,
                       deepspeed="cpu")


def test_a_worker_given_one_gpu_gets_that_gpu(cluster):
    ray = cluster

    def probe():
        import os

        from dlma_ray.workers.devices import ray_device

        return ray.get_runtime_context().get_accelerator_ids()["GPU"], os.environ.get("CUDA_VISIBLE_DEVICES"), \
            ray_device()

    one_gpu = ray.remote(num_gpus=1, num_cpus=0, max_calls=1)(probe)
    # Ray narrows CUDA_VISIBLE_DEVICES to the assigned GPU: each of two concurrent workers is torch's cuda:0
    narrowed = ray.get([one_gpu.remote(), one_gpu.remote()])
    assert sorted(ids[0] for ids, _, _ in narrowed) == ["0", "1"]
    assert all(visible == ids[0] and device == "cuda:0" for ids, visible, device in narrowed)
    # told not to narrow it, each worker sees both GPUs: the one Ray assigned is its own cuda:<id>, not cuda:0
    env = {"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}
    kept = ray.get([one_gpu.options(runtime_env=env).remote() for _ in range(2)])
    assert sorted(device for _, _, device in kept) == ["cuda:0", "cuda:1"]
    assert all(visible is None and device == f"cuda:{ids[0]}" for ids, visible, device in kept)
