"""Methods are plugins: one decorated class registers a method, and every place that lists or checks
method names reads the registry. A toy method (IPO's squared loss, arXiv 2310.12036) is registered here,
in the test suite only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dlma_ray import methods
from dlma_ray.config.tree import ConfigError, load_config
from dlma_ray.methods.base import Method, float_column, pair_logprobs, register

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def toy_method():
    @register
    class Ipo(Method):
        """IPO: (h - 1/(2 beta))^2 on the same contrastive pairs; everything else as rlcd."""

        name = "toy_ipo"
        summary = "IPO's squared loss (test suite only)"

        def loss(self, model, tokenizer, rows, t, device):
            chosen, rejected = pair_logprobs(model, tokenizer, rows, t["max_length"], device)
            h = (chosen - float_column(rows["ref_logp_chosen"], device)) - (
                rejected - float_column(rows["ref_logp_rejected"], device))
            loss = ((h - 1 / (2 * t["beta"])) ** 2).mean()
            return loss, {"loss": loss.detach()}

    yield Ipo
    methods.unregister("toy_ipo")


def test_the_built_in_methods_are_registered_in_listing_order():
    assert methods.names() == ["dlma", "rlcd", "dpo", "self_contrast", "context_distillation", "rlaif", "self_rewarding",
                               "spin"]
    assert methods.get("dlma").scoring == "contrastive" and methods.get("context_distillation").scoring == "none"
    assert methods.get("self_contrast").unit == "prompts"


def test_a_registered_method_is_known_to_the_config_check_docs_and_comparison(toy_method, tmp_path):
    from dlma_ray.views.compare import discover_methods
    from dlma_ray.views.config_reference import config_reference

    cfg = load_config(None, ["train.method=toy_ipo"])
    assert methods.check(cfg) is methods.get("toy_ipo")
    assert "'toy_ipo'" in config_reference()
    for name in ("toy_ipo", "dlma", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.json").write_text("{}")
    assert discover_methods(str(tmp_path)) == ["dlma", "toy_ipo", "other"]  # registered first, then the rest
    methods.unregister("toy_ipo")
    with pytest.raises(ConfigError, match=r"train\.method: 'toy_ipo' is not a method; expected one of dlma"):
        methods.check(cfg)


def test_a_name_cannot_be_taken_twice(toy_method):
    with pytest.raises(ValueError, match="registered twice"):
        @register
        class Other(Method):
            name = "toy_ipo"


def test_the_toy_loss_against_a_hand_computation(toy_method, tiny_model, tokenizer):
    from conftest import direct_logprob

    ids = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    obj = lambda *v: np.array(list(v), dtype=object)  # noqa: E731
    rows = {"plain_context": obj("Q1: ", "Q2: "), "end_of_turn": obj("<e>", "<e>"),
            "chosen": obj("yes", "fine"), "rejected": obj("no", "bad"),
            "chosen_finished": np.array([True, True]), "rejected_finished": np.array([True, True]),
            "ref_logp_chosen": np.array([-10.0, -12.0]), "ref_logp_rejected": np.array([-11.0, -9.0])}
    t = {"max_length": 64, "beta": 0.5}
    with torch.no_grad():
        loss, _ = methods.get("toy_ipo").loss(tiny_model, tokenizer, rows, t, "cpu")
        expected = []
        for i, ctx in enumerate(("Q1: ", "Q2: ")):
            c = direct_logprob(tiny_model, tokenizer, ctx, ids(rows["chosen"][i]) + ids("<e>"))
            r = direct_logprob(tiny_model, tokenizer, ctx, ids(rows["rejected"][i]) + ids("<e>"))
            h = (c - rows["ref_logp_chosen"][i]) - (r - rows["ref_logp_rejected"][i])
            expected.append((h - 1.0) ** 2)
    assert loss.item() == pytest.approx(float(np.mean(expected)), rel=1e-4)
    assert math.isfinite(loss.item())


def test_the_train_loop_and_the_stages_never_name_a_method():
    """What differs by method lives in dlma_ray/methods/; the loop, the stages and the worker receive it."""
    names = methods.names()
    package = REPO / "dlma_ray"
    paths = [package / f for f in ("workers/training.py", "pipeline.py", "workers/scoring.py", "workers/generation.py")]
    for path in paths + sorted((package / "stages").glob("*.py")):
        text = path.read_text()
        named = [n for n in names if f'"{n}"' in text or f"'{n}'" in text]
        assert not named, f"{path} names {named}"
