"""R and the losses (`dlma_ray.core.losses`) against hand values. The log-probs they take:
tests/unit/model/test_logprobs.py."""

import math

import pytest
import torch

from dlma_ray.core.losses import dlma_loss, self_reward, sft_loss


def test_self_reward_by_hand():
    r = self_reward(torch.tensor(-10.0), torch.tensor(-14.0), torch.tensor(-20.0), torch.tensor(-18.0))
    assert r.item() == pytest.approx((-10 + 14) - (-20 + 18))  # 4 - (-2) = 6


def _hand_loss(h, r, beta, gamma, lo, hi):
    z = beta * h - beta * gamma * min(max(r, lo), hi)
    return -math.log(1 / (1 + math.exp(-z)))


@pytest.mark.parametrize("reward", [3.0, -7.0, 100.0, -100.0])
def test_dlma_loss_by_hand_with_clipping(reward):
    pc, pr, rc, rr = torch.tensor([-5.0]), torch.tensor([-9.0]), torch.tensor([-6.0]), torch.tensor([-8.0])
    loss, m = dlma_loss(pc, pr, rc, rr, torch.tensor([reward]), beta=0.1, gamma=0.2, clip_low=-40, clip_high=40)
    h = (-5 + 6) - (-9 + 8)  # 2
    assert loss.item() == pytest.approx(_hand_loss(h, reward, 0.1, 0.2, -40, 40), rel=1e-6)
    assert m["reward_margin"].item() == pytest.approx(0.1 * h)
    assert m["rewards_chosen"].item() == pytest.approx(0.1) and m["rewards_rejected"].item() == pytest.approx(-0.1)
    assert m["reward_accuracy"].item() == 1.0
    assert m["target_margin"].item() == pytest.approx(0.1 * 0.2 * max(-40, min(40, reward)))


def test_clipping_saturates():
    args = [torch.tensor([-5.0])] * 4
    at_bound = dlma_loss(*args, torch.tensor([40.0]))[0]
    beyond = dlma_loss(*args, torch.tensor([1e6]))[0]
    assert at_bound.item() == pytest.approx(beyond.item())


def test_gamma_zero_is_plain_dpo():
    pc, pr, rc, rr = (torch.tensor([-3.0, -2.0]), torch.tensor([-4.0, -1.0]),
                      torch.tensor([-3.5, -2.5]), torch.tensor([-3.0, -1.5]))
    with_r, _ = dlma_loss(pc, pr, rc, rr, torch.tensor([30.0, -30.0]), gamma=0.0)
    without, _ = dlma_loss(pc, pr, rc, rr, None)
    # By hand: h = (-3 + 3.5) - (-4 + 3) = 1.5 and (-2 + 2.5) - (-1 + 1.5) = 0; DPO loss log(1 + exp(-beta h)).
    hand = (math.log1p(math.exp(-0.15)) + math.log(2.0)) / 2
    assert with_r.item() == pytest.approx(hand, rel=1e-6)
    assert without.item() == pytest.approx(hand, rel=1e-6)


def test_gradients_by_hand():
    """d loss / d log pi(y+) = -beta * sigmoid(-z), z = beta h - beta gamma R: with h = 0, R = 10,
    z = -0.2 and the gradient is -0.1 * sigmoid(0.2) = -0.054983 (-0.05 if gamma were ignored)."""
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    loss, _ = dlma_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), torch.tensor([10.0]))
    loss.backward()
    assert pc.grad.item() == pytest.approx(-0.1 / (1 + math.exp(-0.2)), rel=1e-5)  # raises log p(y+)
    assert pr.grad.item() == pytest.approx(0.1 / (1 + math.exp(-0.2)), rel=1e-5)  # lowers log p(y-)
    flipped = torch.tensor([-5.0], requires_grad=True)
    dlma_loss(flipped, torch.tensor([-5.0]), torch.tensor([-5.0]), torch.tensor([-5.0]), torch.tensor([-10.0]))[0].backward()
    assert flipped.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.2)), rel=1e-5)  # R < 0 softens, never flips


def test_larger_reward_demands_larger_margin():
    args = [torch.tensor([-5.0])] * 4
    low = dlma_loss(*args, torch.tensor([-20.0]))[0]
    high = dlma_loss(*args, torch.tensor([20.0]))[0]
    assert high.item() > low.item()  # a confident pair pushes harder; a negative R softens the push


def test_sft_loss_is_token_mean():
    assert sft_loss(torch.tensor([-6.0, -4.0]), torch.tensor([3, 2])).item() == pytest.approx(2.0)
