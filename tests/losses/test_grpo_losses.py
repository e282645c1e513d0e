"""GRPO losses against hand computations: each advantage normalisation, k1/k3, the clipped surrogate, pass@k."""

import math

import pytest
import torch

from banyan.losses.grpo import clipped_surrogate, group_advantages, kl_per_token, pass_at_k


def test_grpo_advantage_by_hand():
    # group [1, 0, 0, 1]: mean 0.5, sample std sqrt(4 * 0.25 / 3) = 0.57735
    a = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]]), "grpo", eps=0.0)
    s = math.sqrt(1 / 3)
    assert a[0].tolist() == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s])
    assert a[1].tolist() == [0.0] * 4  # equal rewards: exactly 0, even with eps 0 (not 0/0)
    assert group_advantages(torch.tensor([[2.0, 2.0, 2.0]]), "grpo").tolist() == [[0.0, 0.0, 0.0]]
    r = torch.tensor([[0.1, 0.1, 0.1]], dtype=torch.float64)
    assert float(r.mean() - 0.1) != 0.0  # the float mean is off by an ulp ...
    for norm in ("grpo", "dr_grpo", "rloo"):  # ... yet no group of equal rewards gets a (tiny) signal
        assert group_advantages(r, norm).tolist() == [[0.0, 0.0, 0.0]], norm


def test_dr_grpo_and_rloo_by_hand():
    r = torch.tensor([[3.0, 1.0, 2.0]])  # mean 2
    assert group_advantages(r, "dr_grpo").tolist() == [[1.0, -1.0, 0.0]]
    # leave-one-out: 3 - mean(1, 2) = 1.5, 1 - mean(3, 2) = -1.5, 2 - mean(3, 1) = 0
    assert group_advantages(r, "rloo")[0].tolist() == pytest.approx([1.5, -1.5, 0.0])
    assert group_advantages(torch.tensor([[5.0]]), "rloo").tolist() == [[0.0]]
    with pytest.raises(ValueError, match="unknown advantage"):
        group_advantages(r, "ppo")


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert kl_per_token(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    # d = ref - logp = (-0.5, 1.0): exp(d) - d - 1
    assert kl_per_token(logp, ref, "k3").tolist() == pytest.approx([math.exp(-0.5) + 0.5 - 1, math.exp(1) - 2])
    assert kl_per_token(logp, logp, "k3").tolist() == [0.0, 0.0]
    # both estimate KL(pi || ref) from samples of pi: exact on a 3-way categorical
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    exact = float((p * (p / q).log()).sum())
    for kind in ("k1", "k3"):
        est = float((p * kl_per_token(p.log(), q.log(), kind)).sum())
        assert est == pytest.approx(exact, rel=1e-5)


def test_clipped_surrogate_by_hand():
    logp_old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.5]))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    out = clipped_surrogate(logp.requires_grad_(), logp_old, adv, eps_low=0.2, eps_high=0.3)
    # ratio 1.5, A>0: min(1.5, 1.3) = 1.3 clipped; ratio 0.5, A>0: min(0.5, 0.8) = 0.5
    # ratio 1.1, A<0: min(-1.1, -1.1) = -1.1; ratio 0.5, A<0: min(-0.5, -0.8) = -0.8 clipped
    assert out.loss.tolist() == pytest.approx([-1.3, -0.5, 1.1, 0.8])
    assert out.clipped.tolist() == [True, False, False, True]
    out.loss.sum().backward()
    # clipped tokens get no gradient; the others d(-ratio*A)/dlogp = -ratio*A
    assert logp.grad.tolist() == pytest.approx([0.0, -0.5, 1.1, 0.0])


def test_on_policy_ratio_is_one_and_gradient_is_policy_gradient():
    logp = torch.tensor([-0.7, -1.2], requires_grad=True)
    out = clipped_surrogate(logp, logp.detach(), torch.tensor([2.0, -1.0]))
    assert out.ratio.tolist() == [1.0, 1.0] and not out.clipped.any()
    out.loss.sum().backward()
    assert logp.grad.tolist() == [-2.0, 1.0]


def test_pass_at_k():
    assert pass_at_k(10, 0, 3) == 0.0 and pass_at_k(10, 8, 3) == 1.0
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))
