"""The DeepSpeed config the train worker builds (`dlma_ray.workers.training.deepspeed_config`), without starting
DeepSpeed. Checkpoints and accumulation on real DeepSpeed engines: tests/e2e/test_train_checkpoint.py."""

from __future__ import annotations

import pytest

from train_settings import train_config


def test_deepspeed_config_accumulates_bf16_in_fp32():
    from dlma_ray.workers.training import deepspeed_config

    t = train_config(3, "bf16", False, 1)
    for stage in (1, 2, 3):
        c = deepspeed_config({**t, "zero_stage": stage}, 1)
        assert c["data_types"] == {"grad_accum_dtype": "fp32"} and c["communication_data_type"] == "fp32"
    assert "data_types" not in deepspeed_config({**t, "precision": "fp32"}, 1)
    with pytest.raises(ValueError, match="zero_stage 1, 2 or 3"):
        deepspeed_config({**t, "zero_stage": 0}, 1)
