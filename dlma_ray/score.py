"""Score stage: Ray Data `map_batches` over scorer actors (a transformers forward on pi_k).

Adds the four contrastive log-probs and the self-reward R (under the round's policy pi_k), and the
reference log-probs of y+ and y- under the plain context (pi_ref: pi_k, or pi_0 by config). RLCD and
the other methods without a self-reward skip the four contrastive passes.
"""

from __future__ import annotations

import numpy as np

from dlma_ray import metrics
from dlma_ray.logprobs import score_texts
from dlma_ray.losses import self_reward


class PairScorer:
    """A Ray Data callable class: generation rows in, pair rows (PAIR_SCHEMA) out."""

    def __init__(self, policy_path: str, reference_path: str, dtype: str = "float32", batch_size: int = 8,
                 padding_side: str = "right", max_length: int | None = None, contrastive: bool = True,
                 trust_remote_code: bool = False, torch_threads: int = 1):
        import torch

        from dlma_ray.models import load_causal_lm, load_tokenizer

        torch.set_num_threads(torch_threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.policy = load_causal_lm(policy_path, dtype, trust_remote_code).to(device)
        self.reference = self.policy if reference_path == policy_path else \
            load_causal_lm(reference_path, dtype, trust_remote_code).to(device)
        self.tokenizer = load_tokenizer(policy_path, trust_remote_code)
        self.opts = dict(batch_size=batch_size, padding_side=padding_side, max_length=max_length)
        self.contrastive = contrastive

    def _score(self, model, contexts, responses) -> np.ndarray:
        # end_of_turn is already appended to each response (it may differ per row in mixed tables).
        return np.array(score_texts(model, self.tokenizer, list(contexts), list(responses), "", **self.opts))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        eot = batch["end_of_turn"]
        chosen = [c + e for c, e in zip(batch["chosen"], eot)]
        rejected = [r + e for r, e in zip(batch["rejected"], eot)]
        n = len(chosen)
        out = dict(batch)
        plain = list(batch["plain_context"])
        if self.contrastive:
            contexts = list(batch["pos_context"]) * 2 + list(batch["neg_context"]) * 2
            responses = chosen + rejected + chosen + rejected
            if self.reference is self.policy:  # one sorted pass over all six sets of sequences
                logp = self._score(self.policy, contexts + plain * 2, responses + chosen + rejected)
                ref = logp[4 * n:]
            else:
                logp = self._score(self.policy, contexts, responses)
                ref = self._score(self.reference, plain * 2, chosen + rejected)
            pc, pr, nc, nr = (logp[i * n:(i + 1) * n] for i in range(4))
            out.update(logp_pos_chosen=pc, logp_neg_chosen=nc, logp_pos_rejected=pr, logp_neg_rejected=nr,
                       self_reward=self_reward(pc, nc, pr, nr))
        else:
            ref = self._score(self.reference, plain * 2, chosen + rejected)
            nan = np.full(n, np.nan)
            out.update(logp_pos_chosen=nan, logp_neg_chosen=nan, logp_pos_rejected=nan, logp_neg_rejected=nan,
                       self_reward=nan)
        out.update(ref_logp_chosen=ref[:n], ref_logp_rejected=ref[n:2 * n])
        if "similarity" not in out:  # Self-Contrast's columns: set by its filter, empty for other methods
            out.update(similarity=np.full(n, np.nan), negative_index=np.zeros(n, dtype=np.int32))
        round_index = int(batch["round"][0]) if n else -1
        metrics.inc("dlma_pairs_scored_total", n, round=round_index)
        metrics.observe_self_rewards(out["self_reward"], round_index)
        return out
