"""DLMA (METHODS.md): DPO whose margin is shifted by the clipped self-reward R the policy gave the pair."""

from __future__ import annotations

from dlma_ray.methods.base import Method, float_column, pair_logprobs, register


@register
class Dlma(Method):
    name = "dlma"
    order = 0
    judge = "self_reward"
    iterates = True
    scoring = "contrastive"  # R needs the four log-probs under the positive and negative prompts
    summary = "contrastive pairs, self-rewarding score R, DPO with margin beta*gamma*clip(R)"

    def loss(self, model, tokenizer, rows, train, device):
        from dlma_ray.core.losses import dlma_loss

        logp_chosen, logp_rejected = pair_logprobs(model, tokenizer, rows, train["max_length"], device,
                                                   train.get("packing", True))
        return dlma_loss(logp_chosen, logp_rejected, float_column(rows["ref_logp_chosen"], device),
                         float_column(rows["ref_logp_rejected"], device), float_column(rows["self_reward"], device),
                         beta=train["beta"], gamma=train["gamma"], clip_low=train["clip_low"],
                         clip_high=train["clip_high"])
