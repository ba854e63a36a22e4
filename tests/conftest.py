"""Shared fixtures: the real SmolLM2 tokenizer and a tiny, randomly initialised model built on it.

The tiny model (2 layers, hidden 128, head dim 64) keeps SmolLM2's tokenizer and chat template, so
every code path that renders, tokenises, generates or trains runs for real, in seconds.

The two tiers say what they are by their path: tests/unit/<folder>/test_<module>.py (mirroring dlma_ray/) start no
Ray, vLLM or DeepSpeed; every test under tests/e2e/ does (or loads the real SmolLM2) and is marked `slow` here, by
its path, and only those (`pytest -m "not slow"` runs the unit tier).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARED = Path(__file__).resolve().parents[2] / "shared"
E2E = Path(__file__).resolve().parent / "e2e"


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config, items):
    """Every test under tests/e2e/ is slow; the marker comes from the path alone."""
    for item in items:
        if Path(item.path).resolve().is_relative_to(E2E):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smol_dir() -> str:
    from dlma_ray.model.loading import resolve_model_path

    return resolve_model_path("builtin:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer(smol_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_dir) -> str:
    from dlma_ray.model.tiny import make_tiny_model

    out = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(smol_dir, str(out))
    return str(out)


@pytest.fixture(scope="session")
def hh_file(tmp_path_factory) -> Path:
    """16 short hh-rlhf rows from ../shared (chosen / rejected dialogues: human pairs for dpo, and prompts whose
    last assistant turn is the SFT target self_contrast and spin need), as a jsonl file of the session's own."""
    import gzip
    import json

    source = SHARED / "data/hh-rlhf-harmless/pairs.jsonl.gz"
    if not source.exists():
        pytest.skip(f"{source} is not available")
    rows = []
    with gzip.open(source, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if len(row["chosen"]) < 400 and len(row["rejected"]) < 400:
                rows.append({"chosen": row["chosen"], "rejected": row["rejected"]})
            if len(rows) == 16:
                break
    path = tmp_path_factory.mktemp("data") / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from dlma_ray.model.loading import load_causal_lm

    return load_causal_lm(tiny_model_dir)


def direct_logprob(model, tokenizer, context: str, response_ids: list[int]) -> float:
    """Reference for every batched log-prob in the tests: one unpadded sequence, the context tokenised
    on its own, a plain loop over the response positions (no mask, no batching, no project code)."""
    import torch

    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + list(response_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)  # exact: float32 drifts
    return sum(logp[len(ctx) + j - 1, int(t)].item() for j, t in enumerate(response_ids))


def eot_ids(tokenizer, end_of_turn: str = "<|im_end|>") -> list[int]:
    return tokenizer(end_of_turn, add_special_tokens=False)["input_ids"]


def checkpoint_registered(run_dir, k: int) -> bool:
    """Whether Ray Train has registered a checkpoint of round k's training.

    A `checkpoint_*` folder appears while it is still being written; only the checkpoint manager's
    snapshot says that a retry or a resubmitted job will find it (a kill before that restarts at step 0).
    """
    import json

    snapshot = Path(run_dir) / f"round_{k}" / ".ray_train" / "train" / "checkpoint_manager_snapshot.json"
    try:
        return json.loads(snapshot.read_text()).get("latest_checkpoint_result") is not None
    except (OSError, ValueError):  # not there yet, or caught mid-write
        return False
