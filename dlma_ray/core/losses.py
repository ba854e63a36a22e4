"""The self-rewarding score and the DLMA / DPO losses, as plain tensor functions.

Notation (METHODS.md): l±(y) is the summed log-prob of response y under the positive / negative
context; h is the DPO log-ratio margin under the plain context.

    R    = [l+(y+) - l-(y+)] - [l+(y-) - l-(y-)]
    loss = -log sigmoid(beta * h - beta * gamma * clip(R, L, U))

y+ is always the chosen response: a negative R softens the push on a pair, it never flips it.
gamma = 0 is plain DPO (RLCD on contrastive data). Self-Contrast's grouped DPO and SPIN's loss are below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def self_reward(logp_pos_chosen, logp_neg_chosen, logp_pos_rejected, logp_neg_rejected):
    """R(q, y+, y-): how much more the positive context prefers y+ over y- than the negative one does."""
    return (logp_pos_chosen - logp_neg_chosen) - (logp_pos_rejected - logp_neg_rejected)


def dlma_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    reward: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    gamma: float = 0.2,
    clip_low: float = -40.0,
    clip_high: float = 40.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean DLMA loss over a batch of pairs, and DPO metrics (detached).

    All inputs are [B] summed log-probs; ``reward`` is the stored self-reward R (ignored when
    gamma = 0 or None). Returns (loss, metrics) with metrics: loss, rewards_chosen,
    rewards_rejected, reward_margin, reward_accuracy, target_margin, logps_chosen, logps_rejected, h
    and, when R is used, self_reward_raw and self_reward_clipped (all batch means).
    """
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    target = torch.zeros_like(h)
    extra = {}
    if reward is not None and gamma != 0.0:
        clipped = reward.to(h.dtype).clamp(clip_low, clip_high)
        target = beta * gamma * clipped
        extra = {"self_reward_raw": reward, "self_reward_clipped": clipped}
    loss = -F.logsigmoid(beta * h - target).mean()
    return loss, dpo_metrics(loss, beta * chosen_ratio, beta * rejected_ratio, target, logps_chosen=policy_chosen,
                             logps_rejected=policy_rejected, h=h, **extra)


@torch.no_grad()
def dpo_metrics(loss, rewards_chosen, rewards_rejected, target, **means) -> dict[str, torch.Tensor]:
    """Batch means of the implicit rewards beta*(log pi - log ref) of y+ and y-, as TRL reports them, and the
    batch mean of every tensor in ``means`` (e.g. logps_chosen: the policy's summed log-probs of y+)."""
    return {
        "loss": loss.detach(),
        "rewards_chosen": rewards_chosen.mean(),
        "rewards_rejected": rewards_rejected.mean(),
        "reward_margin": (rewards_chosen - rewards_rejected).mean(),
        "reward_accuracy": (rewards_chosen > rewards_rejected).float().mean(),
        "target_margin": target.mean(),
        **{k: v.detach().float().mean() for k, v in means.items()},
    }


def sft_loss(summed_logp: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood of responses (context distillation)."""
    return -summed_logp.sum() / num_tokens.sum().clamp(min=1)


def grouped_dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    group: torch.Tensor,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Self-Contrast's loss: y* against each of its prompt's k negatives, -(1/k) sum log sigmoid(beta h), per prompt.

    ``policy_chosen`` / ``ref_chosen`` are [B] (one y* per prompt, scored once); ``policy_rejected`` /
    ``ref_rejected`` are [M] summed log-probs of the negatives and ``group`` [M] the prompt (0..B-1) each
    belongs to. The per-prompt means are averaged over prompts, so a prompt weighs the same whatever its k
    (equal to the mean over all pairs when every prompt has k). Metrics as ``dlma_loss``, over pairs.
    """
    group = group.long()
    chosen_ratio = (policy_chosen - ref_chosen)[group]
    rejected_ratio = policy_rejected - ref_rejected
    pair_losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    counts = torch.zeros_like(policy_chosen).index_add(0, group, torch.ones_like(pair_losses))
    per_prompt = torch.zeros_like(policy_chosen).index_add(0, group, pair_losses) / counts.clamp(min=1)
    loss = per_prompt[counts > 0].mean()
    return loss, dpo_metrics(loss, beta * chosen_ratio, beta * rejected_ratio, torch.zeros((), dtype=loss.dtype),
                             logps_chosen=policy_chosen[group], logps_rejected=policy_rejected,
                             h=chosen_ratio - rejected_ratio)


def spin_loss(
    policy_target: torch.Tensor,
    policy_sample: torch.Tensor,
    opponent_target: torch.Tensor,
    opponent_sample: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SPIN's loss (Chen et al. 2024): the SFT target y* against the opponent's sample y, the opponent pi_t being
    the reference. With h = (log pi(y*) - log pi(y)) - (log pi_t(y*) - log pi_t(y)) on summed log-probs:
    `sigmoid` -log sigmoid(beta h) (the paper's logistic loss, DPO's form), `hinge` max(0, 1 - beta h)."""
    if loss_type not in ("sigmoid", "hinge"):
        raise ValueError(f"spin.loss: {loss_type!r}; expected sigmoid or hinge")
    chosen_ratio = policy_target - opponent_target
    rejected_ratio = policy_sample - opponent_sample
    h = chosen_ratio - rejected_ratio
    per_pair = -F.logsigmoid(beta * h) if loss_type == "sigmoid" else torch.relu(1 - beta * h)
    loss = per_pair.mean()
    return loss, dpo_metrics(loss, beta * chosen_ratio, beta * rejected_ratio, torch.zeros((), dtype=loss.dtype),
                             logps_chosen=policy_target, logps_rejected=policy_sample, h=h)
