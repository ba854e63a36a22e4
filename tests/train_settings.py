"""The train settings of the DeepSpeed checkpoint tests (tests/e2e/test_train_checkpoint.py), also read by the check of
the DeepSpeed config they build (tests/unit/workers/test_training.py)."""

MICRO, ACCUM = 2, 2  # micro-batch size and micro-batches per optimizer step on each rank
LORA_T = {"lora_rank": 4, "lora_alpha": 8.0, "lora_dropout": 0.1, "lora_target_modules": "q_proj,v_proj"}


def train_config(stage: int, precision: str, lora: bool, world: int, **over) -> dict:
    t = dict(global_batch_size=MICRO * ACCUM * world, micro_batch_size=MICRO, zero_stage=stage, precision=precision,
             grad_clip=1.0, optimizer="adamw", lr=1e-6, weight_decay=0.01, gradient_checkpointing=False)
    return {**t, **(LORA_T if lora else {"lora_rank": 0}), **over}
