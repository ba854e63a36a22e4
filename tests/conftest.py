"""Shared fixtures: the real SmolLM2 tokenizer and a tiny, randomly initialised model built on it.

The tiny model (2 layers, hidden 128, head dim 64) keeps SmolLM2's tokenizer and chat template, so
every code path that renders, tokenises, generates or trains runs for real, in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def smol_dir() -> str:
    from dlma_ray.models import resolve_model_path

    return resolve_model_path("builtin:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer(smol_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_dir) -> str:
    from dlma_ray.testing import make_tiny_model

    out = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(smol_dir, str(out))
    return str(out)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from dlma_ray.models import load_causal_lm

    return load_causal_lm(tiny_model_dir)
