"""SPIN's loss (dlma_ray.core.losses.spin_loss) against a hand computation, both variants."""

from __future__ import annotations

import math

import pytest
import torch

from dlma_ray.core.losses import dlma_loss, spin_loss


def test_spin_loss_by_hand():
    pt, ps = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0])  # log pi(y*), log pi(y)
    ot, os_ = torch.tensor([-11.0, -19.0]), torch.tensor([-11.0, -16.0])  # the opponent's
    # h = (pt - ps) - (ot - os): pair 0: 2 - 0 = 2; pair 1: -5 - (-3) = -2
    beta = 0.1
    expected = (-math.log(1 / (1 + math.exp(-0.2))) - math.log(1 / (1 + math.exp(0.2)))) / 2
    loss, metrics = spin_loss(pt, ps, ot, os_, beta=beta)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["h"].item() == pytest.approx(0.0) and metrics["reward_accuracy"].item() == 0.5
    hinge, _ = spin_loss(pt, ps, ot, os_, beta=beta, loss_type="hinge")
    assert hinge.item() == pytest.approx((max(0, 1 - 0.2) + max(0, 1 + 0.2)) / 2, abs=1e-6)
    # the logistic loss is DPO's form with y* as chosen
    assert loss.item() == pytest.approx(dlma_loss(pt, ps, ot, os_, None, beta=beta, gamma=0.0)[0].item(), abs=1e-7)
    with pytest.raises(ValueError, match="spin.loss"):
        spin_loss(pt, ps, ot, os_, loss_type="ipo")


def test_spin_loss_gradient_pushes_the_target_up_and_the_sample_down():
    pt, ps = torch.tensor([-10.0], requires_grad=True), torch.tensor([-12.0], requires_grad=True)
    loss, _ = spin_loss(pt, ps, torch.tensor([-10.0]), torch.tensor([-12.0]), beta=0.1)
    loss.backward()
    assert pt.grad.item() < 0 < ps.grad.item()
