"""A tiny reward model for the evaluation's external judge: shared by tests/unit/stages/test_evaluate.py and
tests/e2e/test_evaluate_stage.py."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_reward_model(folder: Path, tiny_model_dir: str, tokenizer):
    """A one-label sequence-classification head on the tiny Llama, saved as safetensors with the tokenizer."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_labels = 1
    torch.manual_seed(1)
    rm = AutoModelForSequenceClassification.from_config(config).eval()
    rm.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return rm
