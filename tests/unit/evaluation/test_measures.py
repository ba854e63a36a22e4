"""Evaluation metrics on constructed cases with known answers: accuracy by |R| range, implicit rewards,
the assembled measures, perplexity and answer NLL.

Fast: pure functions, constructed logits, and the tiny model in-process. The judges are in
tests/unit/evaluation/test_judges.py, the evaluate stage's pieces in tests/unit/stages/test_evaluate.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import direct_logprob
from dlma_ray.model.logprobs import answer_nll, answer_nll_from_logits, collate
from dlma_ray.evaluation.measures import R_BIN_EDGES, accuracy_by_range, assemble_measures, implicit_rewards
from dlma_ray.evaluation.refusal import refusal_rates


# ---------------------------------------------------------------- accuracy by |R| range

def test_accuracy_by_range_bins_counts_and_ties():
    values = [0.5, -0.5, 0.0, 1.5, 3.0, -7.0, 15.0, 25.0, 50.0, -100.0, float("inf"), float("nan")]
    out = accuracy_by_range(values)
    assert [(b["low"], b["high"]) for b in out["bins"]] == [(0, 1), (1, 2), (2, 5), (5, 10), (10, 20), (20, 40),
                                                             (40, None)]
    assert [b["n"] for b in out["bins"]] == [3, 1, 1, 1, 1, 1, 3]
    assert [b["correct"] for b in out["bins"]] == [1, 1, 1, 0, 1, 1, 2]
    assert out["bins"][0]["accuracy"] == pytest.approx(1 / 3)  # the tie R == 0 is in [0, 1) and counts wrong
    assert out["bins"][3]["accuracy"] == 0.0
    assert out["n"] == 11 and out["nan"] == 1 and out["ties"] == 1
    assert out["correct"] == 7 and out["accuracy"] == pytest.approx(7 / 11)
    assert sum(b["n"] for b in out["bins"]) == out["n"]
    assert len(R_BIN_EDGES) == 8 and math.isinf(R_BIN_EDGES[-1])


def test_empty_bins_report_none_not_zero():
    out = accuracy_by_range([])
    assert out["n"] == 0 and out["accuracy"] is None and all(b["accuracy"] is None for b in out["bins"])


def test_implicit_rewards_by_hand():
    # 0.1*((-1+2)-(-3+3)) = 0.1; 0.1*((-2+2)-(-1+2)) = -0.1; 0.1*(0-0) = 0
    out = implicit_rewards([-1.0, -2.0, -5.0], [-3.0, -1.0, -4.0], [-2.0, -2.0, -5.0], [-3.0, -2.0, -4.0], beta=0.1)
    assert out == pytest.approx([0.1, -0.1, 0.0])


def _answers(texts, kinds, tokens=None):
    return [{"prompt_id": str(i), "answer": t, "kind": k, "tokens": (tokens or [4] * len(texts))[i], "finished": True}
            for i, (t, k) in enumerate(zip(texts, kinds))]


def test_assemble_measures_by_hand():
    """Constructed task outputs with known answers: the gain, its sign, win / tie counts, refusal by kind,
    KL and implicit reward against pi_0, each with its n and an interval."""
    new = _answers(["I can't help with that.", "Sure, here it is.", "same", "Kill it with `kill -9 PID`."],
                   ["harmful", "harmful", "borderline", "borderline"], tokens=[2, 4, 5, 10])
    base = _answers(["Sure, first you...", "Sure, here it is!", "same", "I won't help with killing."],
                    ["harmful", "harmful", "borderline", "borderline"], tokens=[4, 4, 5, 10])
    initial = {"contrast_policy": [3.0, 1.0, 0.5, 2.0], "contrast_baseline": [1.0, 2.0, 0.5, 0.0],
               "tokens_policy": [2, 4, 5, 10], "tokens_baseline": [4, 4, 5, 10],
               "logp_policy_answers": [-10.0, -8.0, -6.0, -4.0], "pairs_chosen": [-5.0, -6.0],
               "pairs_rejected": [-7.0, -7.0], "neutral": ([math.log(2) * 3, math.log(2) * 5], [3, 5]), "margins": None}
    scores = {"logp_policy_answers": [-9.0, -8.0, -5.0, -4.0], "pairs_chosen": [-4.0, -6.5],
              "pairs_rejected": [-7.0, -7.0], "self_reward_human": [1.0, -2.0], "heldout_r": [1.0, 3.0],
              "neutral": ([math.log(4) * 3, math.log(4) * 5], [3, 5]),
              "rlaif": {"n": 2, "accuracy": 0.5}}
    m, d = assemble_measures(new, base, initial, scores, None, beta=0.1, seed=0, refusal_rates=refusal_rates)
    gain = m["distillation_gain"]
    assert gain["n"] == 4 and gain["mean"] == pytest.approx((2 - 1 + 0 + 2) / 4)
    assert gain["ci95"][0] <= gain["mean"] <= gain["ci95"][1]
    assert m["distillation_gain_per_token"]["mean"] == pytest.approx(((1.5 - 0.25) + (0.25 - 0.5) + 0 + (0.2 - 0)) / 4)
    # Wins: prompts 0 and 3; prompt 1 loses; prompt 2 has identical texts: a tie whatever C says.
    assert (m["win_rate"]["count"], m["win_rate"]["ties"], m["win_rate"]["losses"]) == (2, 1, 1)
    assert m["refusal_harmful"]["rate"] == 0.5 and m["refusal_harmful_initial"]["rate"] == 0.0
    assert m["over_refusal"]["rate"] == 0.0 and m["over_refusal_initial"]["rate"] == 0.5
    assert m["kl_to_initial"]["mean"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    # implicit: 0.1*((-4+5)-0) = 0.1 > 0; 0.1*((-6.5+6)-0) = -0.05: one of two right.
    assert m["implicit_reward_accuracy"]["rate"] == 0.5 and m["implicit_reward_margin"]["mean"] == pytest.approx(0.025)
    assert m["perplexity_neutral"]["value"] == pytest.approx(4.0) and m["perplexity_neutral_initial"]["value"] == pytest.approx(2.0)
    assert m["self_reward_accuracy_human"]["rate"] == 0.5 and m["heldout_pairs_r"]["mean"] == 2.0
    for name, summary in m.items():
        assert summary["n"] > 0 and len(summary["ci95"]) == 2, name
    assert d["answers"]["policy"]["finished"]["rate"] == 1.0


def test_perplexity_on_constructed_logits():
    # Two sequences: context of 2 tokens, answers of 3 and 1 tokens; vocab 8.
    batch = collate([([1, 2], [3, 4, 5]), ([1, 2], [6])], pad_id=0)
    uniform = torch.zeros(2, batch.input_ids.shape[1], 8)
    nll, count = answer_nll_from_logits(uniform, batch)
    assert count.tolist() == [3, 1]
    assert nll.tolist() == pytest.approx([3 * math.log(8), math.log(8)])
    # Put probability 1/2 on every true next token: perplexity exactly 2, whatever the answer lengths.
    logits = torch.full((2, batch.input_ids.shape[1], 8), -1e4)
    for b in range(2):
        for t in range(batch.input_ids.shape[1] - 1):
            logits[b, t, batch.input_ids[b, t + 1]] = 0.0
            logits[b, t, 7] = 0.0
    nll, count = answer_nll_from_logits(logits, batch)
    assert (nll / count).tolist() == pytest.approx([math.log(2)] * 2)


def test_answer_nll_matches_score_texts(tiny_model, tokenizer):
    contexts = ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"] * 2
    answers = ["Hello there, friend.", "Hi"]
    nll, count = answer_nll(tiny_model, tokenizer, contexts, answers, batch_size=2)
    direct = [direct_logprob(tiny_model, tokenizer, c, tokenizer(a, add_special_tokens=False)["input_ids"])
              for c, a in zip(contexts, answers)]
    assert [-x for x in nll] == pytest.approx(direct, abs=1e-4)
    assert count == [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
