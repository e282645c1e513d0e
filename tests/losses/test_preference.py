"""Preference losses against hand computations (banyan.losses.preference)."""

import math

import pytest
import torch

from banyan.losses.preference import dpo_sigmoid, ipo, preference_loss, simpo

T = torch.tensor


def test_dpo_sigmoid_closed_form():
    # chosen log-ratio +1, rejected -1, beta 0.5 -> z = 1; loss = log(1 + e^-1)
    out = dpo_sigmoid(T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0]), beta=0.5)
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.5) and out.rejected_rewards.item() == pytest.approx(-0.5)
    # cDPO: 0.9 * log(1 + e^-1) + 0.1 * log(1 + e)
    smooth = dpo_sigmoid(T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0]), beta=0.5, label_smoothing=0.1)
    assert smooth.losses.item() == pytest.approx(0.9 * math.log1p(math.exp(-1)) + 0.1 * math.log1p(math.e), abs=1e-6)


def test_dpo_equal_policy_and_reference_is_log2():
    p = T([-5.0, -2.0, -7.5])
    out = dpo_sigmoid(p, p - 1, p, p - 1, beta=0.3)
    assert torch.allclose(out.losses, torch.full((3,), math.log(2)))
    assert out.chosen_rewards.abs().max() == 0 and out.rejected_rewards.abs().max() == 0


def test_ipo_closed_form():
    # margin h = 2: (2 - 1/(2*0.5))^2 = 1; with beta 0.25 the target 1/(2 beta) = 2 is met: 0
    assert ipo(T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0]), beta=0.5).losses.item() == pytest.approx(1.0)
    assert ipo(T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0]), beta=0.25).losses.item() == pytest.approx(0.0)


def test_simpo_closed_form_and_no_reference():
    # averages -2 and -3; z = 2 * (-2) - 2 * (-3) - 1 = 1
    out = simpo(T([-4.0]), T([-9.0]), T([2.0]), T([3.0]), beta=2.0, gamma=1.0)
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(-4.0) and out.rejected_rewards.item() == pytest.approx(-6.0)
    same = preference_loss("simpo", T([-4.0]), T([-9.0]), T([2.0]), T([3.0]), beta=2.0, gamma=1.0)
    assert same.losses.item() == pytest.approx(out.losses.item())


def test_nll_term_and_errors():
    base = preference_loss("sigmoid", T([-4.0]), T([-6.0]), T([2.0]), T([3.0]), T([-4.0]), T([-6.0]), beta=0.1)
    with_nll = preference_loss("sigmoid", T([-4.0]), T([-6.0]), T([2.0]), T([3.0]), T([-4.0]), T([-6.0]),
                               beta=0.1, nll_alpha=0.5)
    assert with_nll.losses.item() - base.losses.item() == pytest.approx(0.5 * 2.0)  # 0.5 * (4 / 2 tokens)
    with pytest.raises(ValueError, match="reference"):
        preference_loss("sigmoid", T([-1.0]), T([-2.0]), T([1.0]), T([1.0]), beta=0.1)
    with pytest.raises(ValueError, match="unknown"):
        preference_loss("kto", T([-1.0]), T([-2.0]), T([1.0]), T([1.0]), T([0.0]), T([0.0]), beta=0.1)


def test_gradient_pushes_chosen_up():
    pc, pr = T([-3.0], requires_grad=True), T([-3.0], requires_grad=True)
    dpo_sigmoid(pc, pr, T([-3.0]), T([-3.0]), beta=1.0).losses.sum().backward()
    # d/dpc of -log sigmoid(pc - pr) at 0 is -1/2, and +1/2 for pr
    assert pc.grad.item() == pytest.approx(-0.5) and pr.grad.item() == pytest.approx(0.5)
