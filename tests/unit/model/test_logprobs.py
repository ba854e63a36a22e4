"""The log-probs (`dlma_ray.model.logprobs`): batched against an unbatched reference, masks, ids and sums by hand.
R and the losses against hand values: tests/unit/core/test_losses.py."""

import math

import pytest
import torch

from dlma_ray.model.logprobs import (
    ResponseTooLong, response_ids, score_ids, score_texts, sequence_logprobs, side_ids, summed_response_logprobs,
    tokenize_responses,
)
from dlma_ray.core.prompts import BUILTIN_PAIRS, ContrastiveRenderer

CONTEXTS_AND_RESPONSES = [
    ("How do I boil an egg?", "Put it in boiling water for about nine minutes."),
    ("Hi", "Hello!"),
    ("Tell me a very long story about a dragon who learned to cook soup in the mountains.",
     "Once upon a time there was a dragon. It liked soup. The end of a long and winding tale, truly."),
    ("What's 2+2?", "4"),
]


def unbatched_logprob(model, tokenizer, context: str, response: str, eot: str) -> float:
    """Slow reference: one sequence, no padding, a plain loop over response positions."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    resp = tokenizer(response + eot, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + resp])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(logp[len(ctx) + i - 1, tok].item() for i, tok in enumerate(resp))


@pytest.fixture(scope="module")
def renderer(tokenizer):
    return ContrastiveRenderer(tokenizer, BUILTIN_PAIRS["harmless"])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_equals_unbatched(tiny_model, tokenizer, renderer, padding_side):
    contexts = [renderer.positive([{"role": "user", "content": q}]) for q, _ in CONTEXTS_AND_RESPONSES]
    responses = [r for _, r in CONTEXTS_AND_RESPONSES]
    batch = tokenize_responses(tokenizer, contexts, responses, renderer.end_of_turn, padding_side=padding_side)
    assert len(set(map(sum, zip(batch.context_lengths, batch.response_lengths)))) > 1, "lengths must be mixed"
    with torch.no_grad():
        batched = sequence_logprobs(tiny_model, batch)
    expected = [unbatched_logprob(tiny_model, tokenizer, c, r, renderer.end_of_turn)
                for c, r in zip(contexts, responses)]
    assert torch.allclose(batched, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_score_texts_order_and_batch_size_do_not_matter(tiny_model, tokenizer, renderer):
    contexts = [renderer.plain([{"role": "user", "content": q}]) for q, _ in CONTEXTS_AND_RESPONSES]
    responses = [r for _, r in CONTEXTS_AND_RESPONSES]
    one = score_texts(tiny_model, tokenizer, contexts, responses, renderer.end_of_turn, batch_size=1)
    three = score_texts(tiny_model, tokenizer, contexts, responses, renderer.end_of_turn, batch_size=3,
                        padding_side="left")
    assert one == pytest.approx(three, abs=1e-5)


def test_response_mask_covers_response_and_end_of_turn(tokenizer, renderer):
    batch = tokenize_responses(tokenizer, ["abc"], ["hello"], renderer.end_of_turn)
    masked = batch.input_ids[0][batch.response_mask[0]].tolist()
    assert tokenizer.decode(masked) == "hello" + renderer.end_of_turn
    assert renderer.end_of_turn == "<|im_end|>"


def test_too_long_raises_instead_of_cutting_one_side(tokenizer):
    """Cutting y+ and y- to different lengths would bias h: past max_length the pair is refused (and the
    stages drop it, counted)."""
    batch = tokenize_responses(tokenizer, ["one two three"], ["four five"], "", max_length=5)
    assert batch.context_lengths == [3] and batch.response_lengths == [2]
    with pytest.raises(ResponseTooLong):
        tokenize_responses(tokenizer, ["one two three"], ["four five six seven eight"], "", max_length=5)


def test_response_ids_end_of_turn_only_when_finished(tokenizer):
    eot = tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
    sampled = [1, 2, 3]
    assert response_ids(tokenizer, "ignored", sampled, True, "<|im_end|>") == [1, 2, 3] + eot
    assert response_ids(tokenizer, "ignored", sampled, False, "<|im_end|>") == [1, 2, 3]
    # No stored ids (a given text, an old table): the text is tokenised.
    assert response_ids(tokenizer, "Hello", None, True, "<|im_end|>") == tokenizer("Hello")["input_ids"] + eot
    rows = {"chosen": ["a", "b"], "chosen_token_ids": [[5, 6], [7]], "chosen_finished": [True, False],
            "end_of_turn": ["<|im_end|>"] * 2}
    assert side_ids(tokenizer, rows, "chosen") == [[5, 6] + eot, [7]]


def test_score_ids_equals_unbatched_loop(tiny_model, tokenizer, renderer):
    from conftest import direct_logprob

    contexts = [renderer.plain([{"role": "user", "content": q}]) for q, _ in CONTEXTS_AND_RESPONSES]
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for _, r in CONTEXTS_AND_RESPONSES]
    got = score_ids(tiny_model, tokenizer, contexts, ids, batch_size=3)
    assert got == pytest.approx([direct_logprob(tiny_model, tokenizer, c, i) for c, i in zip(contexts, ids)], abs=1e-4)


def test_summed_logprobs_by_hand():
    # vocab 2, uniform logits -> every token costs log(1/2); response of 2 tokens.
    from dlma_ray.model.logprobs import collate

    batch = collate([([0], [1, 0])], pad_id=0)
    logits = torch.zeros(1, 3, 2)
    assert summed_response_logprobs(logits, batch).item() == pytest.approx(2 * math.log(0.5))


def test_token_logprobs_agree_with_float64_over_a_real_vocabulary():
    """Summed over a 256-token response at SmolLM2's vocabulary size, float32 log-probs stay within 1e-4 nats
    of float64 (torch's float32 CPU log_softmax drifts by about 1e-3 here: the train loss would then compare
    biased policy log-probs with the scorer's unbiased reference ones)."""
    from dlma_ray.model.logprobs import gather_token_logprobs

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 256, 49152, generator=gen) * 4
    labels = torch.randint(0, 49152, (2, 256), generator=gen)
    exact = torch.gather(torch.log_softmax(logits.double(), -1), -1, labels.unsqueeze(-1)).squeeze(-1)
    ours = gather_token_logprobs(logits, labels)
    assert ours.dtype == torch.float32
    assert (ours.double() - exact).sum(-1).abs().max() < 1e-4
