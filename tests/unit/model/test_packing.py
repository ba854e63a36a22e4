"""Prefix-tree packing (`dlma_ray.model.packing`) against one unpadded forward per sequence, on the tiny model.

The real SmolLM2 on the score stage's workload: tests/e2e/test_packing_smollm2.py.
"""

import pytest
import torch

from conftest import direct_logprob
from score_sequences import ANSWERS, QUESTIONS, six_sequences
from dlma_ray.model.logprobs import collate, pad_id, score_encoded, sequence_logprobs
from dlma_ray.model.packing import common_prefix, pack_rows, packed_logprobs, row_layout, score_packed


def test_row_layout_by_hand():
    seqs = [[1, 2, 3], [1, 2, 4, 5], [1, 7]]
    lay = row_layout(seqs, first_scored=[2, 2, 1])
    assert lay.segments == [(0, 3, []), (3, 5, [0, 1]), (5, 6, [0])]
    assert lay.ids == [1, 2, 3, 4, 5, 7]  # [1, 2] once, then what each sequence adds
    assert lay.positions == [0, 1, 2, 2, 3, 1]
    assert lay.allowed[4].nonzero().flatten().tolist() == [0, 1, 3, 4]  # token 5 sees 1, 2, 4 and itself
    assert lay.allowed[5].nonzero().flatten().tolist() == [0, 5]
    # (predicting position, label, sequence): 3 after [1, 2]; 4 and 5 after [1, 2] and [1, 2, 4]; 7 after [1]
    assert list(zip(lay.predict_at, lay.labels, lay.owner)) == [(1, 3, 0), (1, 4, 1), (3, 5, 1), (0, 7, 2)]


def test_pack_rows_keeps_neighbours_and_the_budget():
    seqs = [[5, 1, 1], [1, 2, 3], [1, 2, 4], [5, 1, 2], [9] * 10]
    rows = pack_rows(seqs, budget=5)
    assert rows == [[1, 2], [0, 3], [4]]  # 3 + 1 tokens; 3 + 1; a sequence over the budget alone
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2 and sorted(i for r in rows for i in r) == list(range(5))


@pytest.mark.parametrize("tree", [True, False])
@pytest.mark.parametrize("budget,rows_per_batch,padding_side",
                         [(1, 1, "right"), (64, 1, "right"), (64, 3, "left"), (200, 2, "right"), (10_000, 1, "left")])
def test_packed_equals_unbatched(tiny_model, tokenizer, budget, rows_per_batch, padding_side, tree):
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    contexts, responses = six_sequences(tokenizer, chats, ANSWERS)
    contexts.append(contexts[0])  # a duplicate sequence and one that is a prefix of another
    responses.append(list(responses[0]))
    contexts.append(contexts[0])
    responses.append(responses[0][:2])
    encoded = [(tokenizer(c, add_special_tokens=False)["input_ids"], r) for c, r in zip(contexts, responses)]
    got = score_packed(tiny_model, encoded, pad_id(tokenizer), budget, rows_per_batch, padding_side, tree)
    want = [direct_logprob(tiny_model, tokenizer, c, r) for c, r in zip(contexts, responses)]
    assert got == pytest.approx(want, abs=1e-4)


def test_score_encoded_packed_equals_padded(tiny_model, tokenizer):
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    contexts, responses = six_sequences(tokenizer, chats, ANSWERS)
    encoded = [([], [7, 8, 9])] + [(tokenizer(c, add_special_tokens=False)["input_ids"], r)
                                   for c, r in zip(contexts, responses)]  # an empty context: token 0 unscored
    padded = score_encoded(tiny_model, encoded, pad_id(tokenizer), batch_size=4, pack_tokens=0)
    packed = score_encoded(tiny_model, encoded, pad_id(tokenizer), batch_size=4)
    assert packed == pytest.approx(padded, abs=1e-4)


def grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("tree", [True, False])
def test_training_forward_packed_equals_padded(tiny_model, tokenizer, tree):
    """The train losses' packed forward (one prefix-tree row, with the graph) against a padded batch and an
    unbatched float64 reference: the same log-probs, and the same gradient of a loss that weighs each
    sequence differently (a mixed-up owner or a detached token would change it)."""
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    contexts, responses = six_sequences(tokenizer, chats, ANSWERS)
    contexts += [contexts[0], contexts[0]]  # a duplicate sequence and one that is a prefix of another
    responses += [list(responses[0]), responses[0][:2]]
    encoded = [(tokenizer(c, add_special_tokens=False)["input_ids"], r) for c, r in zip(contexts, responses)]
    weights = torch.linspace(-1.0, 2.0, len(encoded))
    tiny_model.train()  # as in training (no dropout in this model: the forward is deterministic)
    try:
        tiny_model.zero_grad()
        packed = packed_logprobs(tiny_model, encoded, pad_id(tokenizer), tree)
        (weights * packed).sum().backward()
        g_packed = grads(tiny_model).clone()
        tiny_model.zero_grad()
        # left padding: the model's attention is now the tree's (use_tree_attention), which must still mask padding
        padded = sequence_logprobs(tiny_model, collate(encoded, pad_id(tokenizer), padding_side="left"))
        (weights * padded).sum().backward()
        g_padded = grads(tiny_model).clone()
        tiny_model.zero_grad()
        # gradient checkpointing recomputes each layer in backward: with the same (tree) attention
        tiny_model.gradient_checkpointing_enable()
        (weights * packed_logprobs(tiny_model, encoded, pad_id(tokenizer), tree)).sum().backward()
        g_recomputed = grads(tiny_model).clone()
        tiny_model.zero_grad()
    finally:
        tiny_model.gradient_checkpointing_disable()
        tiny_model.eval()
    want = [direct_logprob(tiny_model, tokenizer, c, r) for c, r in zip(contexts, responses)]
    assert packed.dtype == torch.float32 and packed.requires_grad
    assert packed.tolist() == pytest.approx(want, abs=1e-4)
    assert packed.tolist() == pytest.approx(padded.tolist(), abs=1e-4)
    assert float(g_packed.norm()) > 0
    assert float((g_packed - g_padded).norm() / g_padded.norm()) < 1e-4
    assert float((g_recomputed - g_packed).norm() / g_packed.norm()) < 1e-5
