"""Prefix-tree packing (`dlma_ray.model.packing`) on the real SmolLM2: the score stage's workload (six sequences
per pair, finished and unfinished responses) against one unpadded forward per sequence, to 1e-3 nats.

The fast cases on the tiny model: tests/unit/model/test_packing.py.
"""

import pytest
import torch

from conftest import direct_logprob
from score_sequences import ANSWERS, QUESTIONS, six_sequences
from dlma_ray.model.logprobs import pad_id, score_ids
from dlma_ray.model.packing import score_packed


def test_packed_matches_naive_forward_on_smollm2(smol_dir, tokenizer):
    """The real model (run under `flock /tmp/heavy.lock`): the packed path of the score stage against a
    forward of each sequence alone, to 1e-3 nats, with rows padded on either side."""
    from dlma_ray.model.loading import load_causal_lm

    torch.set_num_threads(2)
    model = load_causal_lm(smol_dir, "float32")
    chats = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTIONS[0]}]] + \
        [[{"role": "user", "content": q}] for q in QUESTIONS]
    contexts, responses = six_sequences(tokenizer, chats, ANSWERS + ["Sure."])
    naive = [direct_logprob(model, tokenizer, c, r) for c, r in zip(contexts, responses)]
    for padding_side in ("right", "left"):
        got = score_ids(model, tokenizer, contexts, responses, batch_size=8, padding_side=padding_side)
        assert got == pytest.approx(naive, abs=1e-3)
        encoded = [(tokenizer(c, add_special_tokens=False)["input_ids"], r) for c, r in zip(contexts, responses)]
        for tree in (True, False):  # attention per segment, or a dense mask over rows of 128 tokens
            rows = score_packed(model, encoded, pad_id(tokenizer), 128, 3, padding_side, tree)
            assert rows == pytest.approx(naive, abs=1e-3)
