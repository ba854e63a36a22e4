"""Score stage: Ray Data `map_batches` over scorer actors (a transformers forward on pi_k).

Adds the four contrastive log-probs and the self-reward R (under the round's policy pi_k), and the
reference log-probs of y+ and y- under the plain context (pi_ref: pi_k, or pi_0 by config). What is
computed depends on the method's scoring mode:

    contrastive  l±(y±), R and the reference log-probs (dlma)
    reference    the reference log-probs only; l± and R NaN (rlcd, dpo, self_contrast)
    none         no model: every log-prob NaN (context_distillation), only the length check

Responses are scored as token ids (`logprobs.side_ids`: the sampled ids, plus the end-of-turn tokens
only when the response finished). Every row leaves with a `drop_reason` ('' = kept): the labelling judge's
`label_drop` (rlaif, self_rewarding: the prompt got no pair), `unfinished`
(scoring.unfinished=drop), `too_long` (a context + response over train.max_length: the pair is dropped
rather than its two sides cut to different lengths), `nonfinite` (a computed R or reference log-prob is
NaN/inf). The stage counts the reasons and writes only the kept rows.
"""

from __future__ import annotations

import math
import time

import numpy as np

from dlma_ray.workers import phases, telemetry
from dlma_ray.model.logprobs import score_ids, side_ids, text_ids
from dlma_ray.core.losses import self_reward
from dlma_ray.core.prompts import context_ids

SCORING_MODES = ("contrastive", "reference", "none")
SCORE_COLUMNS = ("logp_pos_chosen", "logp_neg_chosen", "logp_pos_rejected", "logp_neg_rejected", "self_reward",
                 "ref_logp_chosen", "ref_logp_rejected")
DROP_REASONS = ("unfinished", "too_long", "nonfinite")  # and the labelling judge's `label_drop` reasons


def contexts_scored(mode: str) -> tuple[str, ...]:
    """The context columns whose sequences a mode scores (and whose lengths must fit)."""
    return {"contrastive": ("pos_context", "neg_context", "plain_context"),
            "reference": ("plain_context",), "none": ("plain_context",)}[mode]


def drop_reasons(tokenizer, batch: dict, chosen: list[list[int]], rejected: list[list[int]], mode: str,
                 max_length: int | None, unfinished: str) -> list[str]:
    """Why each row cannot be scored ('' = it can): unfinished (when dropped by config), then too_long."""
    reasons = [""] * len(chosen)
    label_drop = batch.get("label_drop")
    for i in range(len(chosen)):
        if label_drop is not None and label_drop[i]:  # the labelling judge gave the prompt no pair
            reasons[i] = str(label_drop[i])
        elif unfinished == "drop" and not (bool(batch["chosen_finished"][i]) and bool(batch["rejected_finished"][i])):
            reasons[i] = "unfinished"
        elif max_length is not None:
            longest = max(len(context_ids(tokenizer, str(batch[c][i]))) for c in contexts_scored(mode))
            if longest + max(len(chosen[i]), len(rejected[i])) > max_length:
                reasons[i] = "too_long"
    return reasons


def _ids_column(ids: list[list[int]]) -> np.ndarray:
    out = np.empty(len(ids), dtype=object)
    out[:] = [[int(i) for i in x] for x in ids]  # Python lists: Ray Data keeps them as list<int>
    return out


def _content_ids(tokenizer, batch: dict, side: str) -> np.ndarray:
    """`*_token_ids` as stored, or the tokenised text for a table written before they were kept."""
    if f"{side}_token_ids" in batch:
        return batch[f"{side}_token_ids"]
    return _ids_column([text_ids(tokenizer, str(t)) for t in batch[side]])


class PairScorer:
    """A Ray Data callable class: generation rows in, pair rows (PAIR_SCHEMA + drop_reason) out."""

    def __init__(self, policy_path: str, reference_path: str, dtype: str = "float32", batch_size: int = 8,
                 padding_side: str = "right", max_length: int | None = None, mode: str = "contrastive",
                 unfinished: str = "keep", trust_remote_code: bool = False, torch_threads: int = 1,
                 pack_tokens: int | None = None):
        import torch

        from dlma_ray.workers.devices import ray_device
        from dlma_ray.model.loading import load_causal_lm, load_tokenizer

        if mode not in SCORING_MODES:
            raise ValueError(f"scoring mode {mode!r}: expected one of {SCORING_MODES}")
        phases.process_started()
        torch.set_num_threads(torch_threads)
        self.tokenizer = load_tokenizer(policy_path, trust_remote_code)
        self.policy = self.reference = None
        if mode != "none":
            load_start = time.time()
            device = ray_device()  # the GPU Ray reserved for this actor, or the CPU: never one it merely sees
            self.policy = load_causal_lm(policy_path, dtype, trust_remote_code).to(device)
            self.reference = self.policy if reference_path == policy_path else \
                load_causal_lm(reference_path, dtype, trust_remote_code).to(device)
            phases.record("model_load", load_start, time.time())
        self.opts = dict(batch_size=batch_size, padding_side=padding_side, max_length=max_length,
                         pack_tokens=pack_tokens)  # None: logprobs.PACK_TOKENS
        self.mode, self.unfinished, self.max_length = mode, unfinished, max_length

    def _score(self, model, contexts, responses) -> np.ndarray:
        if not contexts:
            return np.zeros(0)
        return np.array(score_ids(model, self.tokenizer, list(contexts), list(responses), **self.opts))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tok = self.tokenizer
        chosen, rejected = side_ids(tok, batch, "chosen"), side_ids(tok, batch, "rejected")
        n = len(chosen)
        reasons = drop_reasons(tok, batch, chosen, rejected, self.mode, self.max_length, self.unfinished)
        keep = [i for i in range(n) if not reasons[i]]
        out = dict(batch)
        out.update(chosen_token_ids=_content_ids(tok, batch, "chosen"),
                   rejected_token_ids=_content_ids(tok, batch, "rejected"))
        scores = {name: np.full(n, np.nan) for name in SCORE_COLUMNS}
        if self.mode != "none" and keep:
            yc, yr = [chosen[i] for i in keep], [rejected[i] for i in keep]
            plain = [str(batch["plain_context"][i]) for i in keep]
            m = len(keep)
            if self.mode == "contrastive":
                pos = [str(batch["pos_context"][i]) for i in keep]
                neg = [str(batch["neg_context"][i]) for i in keep]
                contexts, responses = pos * 2 + neg * 2, yc + yr + yc + yr
                if self.reference is self.policy:  # one sorted pass over all six sets of sequences
                    logp = self._score(self.policy, contexts + plain * 2, responses + yc + yr)
                    ref = logp[4 * m:]
                else:
                    logp = self._score(self.policy, contexts, responses)
                    ref = self._score(self.reference, plain * 2, yc + yr)
                pc, pr, nc, nr = (logp[j * m:(j + 1) * m] for j in range(4))
                computed = dict(logp_pos_chosen=pc, logp_neg_chosen=nc, logp_pos_rejected=pr, logp_neg_rejected=nr,
                                self_reward=self_reward(pc, nc, pr, nr))
            else:
                ref = self._score(self.reference, plain * 2, yc + yr)
                computed = {}
            computed.update(ref_logp_chosen=ref[:m], ref_logp_rejected=ref[m:2 * m])
            for name, values in computed.items():
                scores[name][keep] = values
            for j, i in enumerate(keep):  # a NaN/inf score is dropped, never read as 0
                if not all(math.isfinite(values[j]) for values in computed.values()):
                    reasons[i] = "nonfinite"
        out.update(scores)
        if "similarity" not in out:  # Self-Contrast's columns: set by its filter, empty for other methods
            out.update(similarity=np.full(n, np.nan), negative_index=np.zeros(n, dtype=np.int32))
        out["drop_reason"] = np.array(reasons, dtype=object)
        round_index = int(batch["round"][0]) if n else -1
        kept = [i for i in range(n) if not reasons[i]]
        telemetry.inc("dlma_pairs_scored_total", len(kept), round=round_index)
        if self.mode == "contrastive":
            telemetry.observe_self_rewards(scores["self_reward"][kept], round_index)
        return out
