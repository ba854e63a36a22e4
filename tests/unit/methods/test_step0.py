"""h = 0 at step 0. With the policy equal to the reference, the DLMA margin h that training computes (its padded
forward, `methods.base.pair_logprobs`, against the reference log-probs the score stage stored) must vanish up to
rounding, in bf16 as in fp32. The scorer packs sequences as prefix trees (`dlma_ray.model.packing`) while training pads
them, so both must run the same attention kernel for this to hold.

Tolerances, max |h| over the pairs (measured on the tiny model, 4-70 token responses, 4 and 6 pairs, three
row sets; a response's summed log-prob is 50-800 nats):

- float32: 3e-4 nats. A summed log-prob of ~600 nats has a float32 ulp of 6e-5 and h adds four of them;
  measured 1.5e-5 to 9e-5.
- bfloat16: 3e-3 nats. bf16 keeps 8 significant bits, and SDPA's CPU kernel blocks the keys by the total
  sequence length, so the same token in a padded row (training) and in an unpadded tree segment (the scorer)
  can round an activation one bf16 ulp apart: measured 6e-5 to 1.1e-3 (2.4e-4 on these rows). Training's own
  forward of one sequence alone and padded beside a longer one differs by as much (6e-5 to 2e-3). Before the
  scorer's tree attention gave SDPA 4-D tensors it ran the unfused math kernel, training the fused one:
  3.8e-3 to 1.5e-2 (1.5e-2 on these rows).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dlma_ray.methods.base import float_column, pair_logprobs
from dlma_ray.model.loading import load_causal_lm
from dlma_ray.core.prompts import BUILTIN_PAIRS, ContrastiveRenderer
from dlma_ray.workers.scoring import PairScorer

TOLERANCE = {"float32": 3e-4, "bfloat16": 3e-3}


def pair_rows(tokenizer, n: int, seed: int = 0) -> dict:
    """Generation rows as the score stage reads them: sampled ids of different lengths (so training pads),
    finished and unfinished responses."""
    r = ContrastiveRenderer(tokenizer, BUILTIN_PAIRS["harmless"])
    rng = np.random.default_rng(seed)
    chats = [[{"role": "user", "content": f"Question {i}: " + "why? " * int(rng.integers(0, 8))}] for i in range(n)]
    rows = {"prompt_id": [f"p{i}" for i in range(n)], "split": ["train"] * n,
            "messages_json": [json.dumps(c) for c in chats], "pos_context": [r.positive(c) for c in chats],
            "neg_context": [r.negative(c) for c in chats], "plain_context": [r.plain(c) for c in chats],
            "end_of_turn": [r.end_of_turn] * n, "chosen": ["yes"] * n, "rejected": ["no"] * n}
    out = {k: np.array(v, dtype=object) for k, v in rows.items()}
    for side in ("chosen", "rejected"):
        ids = np.empty(n, dtype=object)
        ids[:] = [rng.integers(100, 40000, size=int(rng.integers(4, 70))).astype(np.int64) for _ in range(n)]
        out[f"{side}_token_ids"] = ids
        out[f"{side}_finished"] = np.arange(n) % 2 == (side == "rejected")
    out["round"] = np.zeros(n, dtype=np.int32)
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_h_is_zero_at_step_zero(tiny_model_dir, tokenizer, dtype):
    rows = pair_rows(tokenizer, 6)
    threads = torch.get_num_threads()
    try:
        ref = PairScorer(tiny_model_dir, tiny_model_dir, dtype=dtype, mode="reference", max_length=512)(rows)
        model = load_causal_lm(tiny_model_dir, dtype).train()  # the train worker's model: same weights, same dtype
        chosen, rejected = pair_logprobs(model, tokenizer, rows, 512, "cpu")
    finally:
        torch.set_num_threads(threads)
    # h as the loss computes it (losses.dlma_loss): float32 log-probs minus the stored columns read as float32
    h = (chosen - float_column(ref["ref_logp_chosen"], "cpu")) - \
        (rejected - float_column(ref["ref_logp_rejected"], "cpu"))
    assert h.abs().max().item() <= TOLERANCE[dtype], f"|h| at step 0 in {dtype}: {h.abs().max().item():.3g}"


def test_scorer_and_training_run_on_the_fused_attention_kernel(tiny_model_dir, tokenizer):
    """Only SDPA's fused kernel is allowed (CPU flash attention here): it refuses 3-D tensors ("All fused kernels
    requires query, key and value to be 4 dimensional"), as the CUDA ones do, so a tree segment handed to SDPA
    in 3-D raises instead of silently taking the math kernel. Rows with shared prefixes (masked segments) and
    without (causal ones) are both scored."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from dlma_ray.model.logprobs import pad_id
    from dlma_ray.model.packing import score_packed

    model = load_causal_lm(tiny_model_dir, "bfloat16")
    rows = pair_rows(tokenizer, 2)
    encoded = [([1, 2, 3, 4, 5], [6, 7, 8]), ([1, 2, 3, 4, 5], [9, 10]), ([1, 2, 11], [12, 13]), ([20, 21], [22])]
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        scores = score_packed(model, encoded, pad_id(tokenizer), tree=True)
        chosen, rejected = pair_logprobs(model, tokenizer, rows, 512, "cpu")
    assert all(np.isfinite(scores)) and torch.isfinite(torch.cat([chosen, rejected])).all()
