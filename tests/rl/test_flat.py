"""banyan.rl.flat.FlatParams: one buffer behind many parameters gives the per-tensor optimizer's results."""

import copy

import pytest
import torch

from banyan.rl.flat import FlatParams


def _nets():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _loss(net, x):
    return (net(x) ** 2).mean() * 100  # large enough gradients for clipping to act


def test_flat_adam_with_clipping_matches_the_per_tensor_path():
    ref, net = _nets(), None
    net = copy.deepcopy(ref)
    params = list(net.parameters())
    flat = FlatParams(params)
    assert [p is q for p, q in zip(net.parameters(), params)] == [True] * 4  # same Parameter objects
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2, eps=1e-5)
    opt = torch.optim.Adam([flat.param], lr=1e-2, eps=1e-5)
    x = torch.randn(32, 4)
    for _ in range(5):
        opt_ref.zero_grad()
        _loss(ref, x).backward()
        norm_ref = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        opt_ref.step()
        flat.zero_grad()
        _loss(net, x).backward()
        norm = flat.clip_grad_norm_(0.5)
        opt.step()
        assert norm_ref > 0.5  # clipping was active
        torch.testing.assert_close(norm, norm_ref, rtol=1e-6, atol=1e-6)
    for (k, a), b in zip(ref.state_dict().items(), net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    # every parameter and its gradient live in the two buffers
    base, gbase = flat.param.data_ptr(), flat.grad.data_ptr()
    n = flat.param.numel() * flat.param.element_size()
    assert all(base <= p.data_ptr() < base + n and gbase <= p.grad.data_ptr() < gbase + n for p in params)


def test_flat_params_refuse_mixed_dtypes_and_nothing_to_train():
    with pytest.raises(ValueError, match="one dtype"):
        FlatParams([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))])
    with pytest.raises(ValueError, match="at least one"):
        FlatParams([torch.nn.Parameter(torch.zeros(2), requires_grad=False)])
