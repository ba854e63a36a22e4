"""RLAIF's A/B judge (dlma_ray.evaluation.judges.ab): probabilities from fixed log-probs by hand, the two-order
average, a swapped pair's complementary label, the margin, the instruction draw and the prompt's text."""

from __future__ import annotations

import math

import pytest

from dlma_ray.evaluation.judges import ab

A1, A2, B1, B2 = 10, 11, 20, 21  # two spellings of each letter


def test_ab_probability_by_hand():
    # one spelling each: P(A) = e^-1 / (e^-1 + e^-2)
    lp = {A1: -1.0, B1: -2.0, 99: -0.1}
    assert ab.ab_probability(lp, [A1], [B1]) == pytest.approx(math.exp(-1) / (math.exp(-1) + math.exp(-2)), abs=1e-12)
    # two spellings summed: P(A) = (e^-1 + e^-3) / (e^-1 + e^-3 + e^-2 + e^-4); other tokens' mass is ignored
    lp = {A1: -1.0, A2: -3.0, B1: -2.0, B2: -4.0, 99: -0.01}
    a, b = math.exp(-1) + math.exp(-3), math.exp(-2) + math.exp(-4)
    assert ab.ab_probability(lp, [A1, A2], [B1, B2]) == pytest.approx(a / (a + b), abs=1e-12)
    # a letter the engine gave -inf (masked) has no mass; both -inf: no preference
    assert ab.ab_probability({A1: -0.5, B1: -math.inf}, [A1], [B1]) == 1.0
    assert ab.ab_probability({A1: -math.inf, B1: -math.inf}, [A1], [B1]) == 0.5


def test_two_orders_average_and_swapped_pair_is_the_complement():
    # y+ as A: P(A) = 0.8; y+ as B: P(A) = 0.3, so P(B) = 0.7 -> mean 0.75
    assert ab.preference_for_chosen([0.8], [0.3]) == [pytest.approx(0.75)]
    # the same pair with its answers swapped reads the two orders the other way round: 1 - 0.75
    assert ab.preference_for_chosen([0.3], [0.8]) == [pytest.approx(0.25)]
    # pure position bias (always A, whatever A holds) is exactly a tie
    assert ab.preference_for_chosen([0.9], [0.9]) == [0.5]


def test_label_pairs_swaps_and_drops_within_the_margin():
    labels = ab.label_pairs([0.8, 0.3, 0.52, 0.5], [0.3, 0.8, 0.50, 0.5], margin=0.05)
    (p0, s0, d0), (p1, s1, d1), (p2, s2, d2), (p3, s3, d3) = labels
    assert (round(p0, 6), s0, d0) == (0.75, False, False)
    assert (round(p1, 6), s1, d1) == (0.25, True, False)  # y- preferred: swapped, kept
    assert (round(p2, 6), d2) == (0.51, True)  # within 0.05 of 0.5: too unsure
    assert p3 == 0.5 and d3  # a tie is dropped even with margin 0
    assert ab.label_pairs([0.5], [0.5], margin=0.0)[0][2]
    # one order only (RLCD's release): the first reading is the label
    assert ab.label_pairs([0.7], [0.9], margin=0.0, both_orders=False) == [(0.7, False, False)]


def test_instruction_is_a_seeded_cai_principle_or_the_helpful_one():
    assert len(ab.CAI_PRINCIPLES) == 16 and len(set(ab.CAI_PRINCIPLES)) == 16
    drawn = [ab.instruction_for("harmless", 0, f"p{i}") for i in range(200)]
    assert set(drawn) <= set(ab.CAI_PRINCIPLES) and len(set(drawn)) > 8
    assert drawn == [ab.instruction_for("harmless", 0, f"p{i}") for i in range(200)]  # the same draw again
    assert drawn != [ab.instruction_for("harmless", 1, f"p{i}") for i in range(200)]  # the seed matters
    assert ab.instruction_for("helpful", 0, "p0") == "Please choose the response that is more helpful."
    with pytest.raises(ValueError, match="rlaif.instruction"):
        ab.instruction_for("kind", 0, "p0")


def test_labelling_prompt_is_rlcds_text():
    chat = [{"role": "user", "content": "How do I pick a lock?"}]
    text = ab.labelling_prompt(chat, " I can't help. ", "Use a pin.", "Please choose the response that is more helpful.")
    assert text == ("Consider the following conversation between a human and an assistant:\n\n"
                    "Human: How do I pick a lock?\n\nPlease choose the response that is more helpful.\n\n"
                    "Options:\n(A) I can't help.\n(B) Use a pin.\n\nThe answer is: (")


def test_ab_preference_on_a_model_equals_ab_probability_of_its_log_probs(tiny_model, tokenizer):
    """The transformers reading (evaluation) and the engine's reading (log-probs by token id) are one function."""
    import torch

    from dlma_ray.core.prompts import context_ids

    prompts = [ab.labelling_prompt([{"role": "user", "content": f"q{i}"}], "yes", "no", ab.HELPFUL_INSTRUCTION)
               for i in range(3)]
    got = ab.ab_preference(tiny_model, tokenizer, prompts, batch_size=2)
    a_ids, b_ids = ab.letter_token_ids(tokenizer, "A"), ab.letter_token_ids(tokenizer, "B")
    for p, prompt in zip(got, prompts):
        with torch.no_grad():
            logits = tiny_model(input_ids=torch.tensor([context_ids(tokenizer, prompt)])).logits[0, -1].double()
        lp = dict(enumerate(torch.log_softmax(logits, -1).tolist()))
        assert p == pytest.approx(ab.ab_probability(lp, a_ids, b_ids), abs=1e-5)
