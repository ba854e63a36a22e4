"""`dlma-ray plan` against a running Ray cluster: every shipped config planned on one Ray instance with 32 logical
GPUs (no GPU is touched), its cluster read from ray.cluster_resources. The plans given by hand:
tests/unit/test_plan.py."""

from __future__ import annotations

import re

import pytest

from plan_cli import JOB_CONFIGS, run_plan
from dlma_ray.config.tree import load_config


@pytest.fixture(scope="module")
def logical_gpu_cluster():
    """One Ray instance for the module: 32 logical H100s (no GPU is touched), the custom resources the shipped
    configs name."""
    import ray

    # address="local": a Ray of its own, never another test lane's (ray.init() alone may join a running one)
    ray.init(address="local", num_cpus=256, num_gpus=32,
             resources={"accelerator_type:H100": 1, "engine_node": 1, "train_slot": 2},
             include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=[p.name for p in JOB_CONFIGS])
def test_shipped_configs_on_a_ray_cluster_with_logical_gpus(logical_gpu_cluster, path):
    # The logical GPUs sit on this machine, whose host memory (Ray's `memory` resource) is a GPU node's tenth.
    rc, out = run_plan("--config", str(path), "--host-memory", "2000")
    assert "the running Ray cluster (ray.cluster_resources)" in out and "32 GPUs x 80 GB" in out, out
    assert rc == 0, out
    cfg = load_config(str(path))
    assert re.search(rf"train: {cfg.resources.num_train_workers} x DeepSpeed rank", out), out

