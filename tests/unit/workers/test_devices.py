"""The device of a model-loading worker from the GPUs Ray assigned it (`dlma_ray.workers.devices.cuda_device`), by
hand. The workers themselves, in real Ray: tests/e2e/test_devices_in_ray.py."""

from __future__ import annotations

import pytest

from dlma_ray.workers.devices import cuda_device


def test_cuda_device_maps_ray_ids_through_cuda_visible_devices():
    assert cuda_device([], None) == cuda_device([], "0,1") == "cpu"
    assert cuda_device(["1"], "1") == "cuda:0"  # Ray narrowed CUDA_VISIBLE_DEVICES to the assigned GPU
    assert cuda_device(["3"], "2,3") == "cuda:1"  # torch numbers the listed devices from 0
    assert cuda_device(["5", "4"], "4,5") == "cuda:0"  # the first assigned one in torch's order
    assert cuda_device(["1"], None) == cuda_device(["1"], "") == "cuda:1"  # nothing hidden: Ray's id is torch's
    with pytest.raises(RuntimeError, match="lists none of them"):
        cuda_device(["2"], "0,1")
