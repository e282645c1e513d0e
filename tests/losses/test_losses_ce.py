"""Chunked cross-entropy equals the plain one (loss and gradients) and never saves [N, V] tensors."""

import pytest
import torch
import torch.nn.functional as F

from banyan.losses import cross_entropy, lm_loss

B, T, D, V = 3, 7, 16, 53  # N = 21 positions: odd, prime-ish, so most chunks do not divide it


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def inputs(seed=0, ignore=True):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(B, T, D, generator=g) * 0.5).requires_grad_()
    w = (torch.randn(V, D, generator=g) * 0.3).requires_grad_()
    t = torch.randint(0, V, (B, T), generator=g)
    if ignore:
        t[0, 2] = t[2, 6] = t[1, 0] = -100
    return h, w, t


def grads(loss, h, w, upstream=None):
    return torch.autograd.grad(loss, (h, w), upstream)


@pytest.mark.parametrize("chunk", [1, 4, 5, 8, 21, 64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_chunked_equals_plain(chunk, reduction):
    h, w, t = inputs()
    ref = F.cross_entropy(F.linear(h, w).flatten(0, 1), t.flatten(), ignore_index=-100, reduction=reduction)
    if reduction == "none":
        ref = ref.view(B, T)
    out = lm_loss(h, w, t, chunk=chunk, reduction=reduction)
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    up = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3)) if reduction == "none" else None
    for a, b in zip(grads(out, h, w, up), grads(ref, h, w, up)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    if reduction == "none":
        assert torch.all(out[t == -100] == 0)


def test_plain_path_and_convenience_function_agree():
    h, w, t = inputs()
    torch.testing.assert_close(lm_loss(h, w, t), cross_entropy(F.linear(h, w), t))


def test_chunked_saves_nothing_vocab_sized():
    h, w, t = inputs(ignore=False)
    saved = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = lm_loss(h, w, t, chunk=5)
    n = B * T
    assert saved and max(saved) <= max(n * D, V * D) < n * V  # hidden, weight, targets, lse only
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        lm_loss(h, w, t, chunk=0)
    assert max(saved) == n * V  # the plain path does keep the full log-softmax
    loss.backward()
    assert h.grad is not None and w.grad is not None


def test_all_ignored_behaves_like_f_cross_entropy():
    h, w, t = inputs()
    t.fill_(-100)
    assert torch.isnan(lm_loss(h, w, t, chunk=4)) and torch.isnan(lm_loss(h, w, t))
    assert lm_loss(h, w, t, chunk=4, reduction="sum").item() == 0.0


def test_autocast_bf16_runs_close_to_fp32():
    h, w, t = inputs()
    ref = lm_loss(h, w, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = lm_loss(h, w, t, chunk=4)
        plain = lm_loss(h, w, t)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(chunked, plain, atol=2e-2, rtol=2e-2)
    gh, gw = grads(chunked, h, w)
    assert gh.dtype == h.dtype and gw.dtype == w.dtype and torch.isfinite(gw).all()


def test_bad_inputs_are_named():
    h, w, t = inputs()
    with pytest.raises(ValueError, match="hidden must be"):
        lm_loss(h[0], w, t)
    with pytest.raises(ValueError, match="weight must be"):
        lm_loss(h, w[:, :3], t)
    with pytest.raises(ValueError, match="targets must be"):
        lm_loss(h, w, t[:, :3])
    with pytest.raises(ValueError, match="chunk"):
        lm_loss(h, w, t, chunk=-1)
    with pytest.raises(ValueError, match="reduction"):
        lm_loss(h, w, t, reduction="avg")
    t[0, 0] = V
    with pytest.raises(ValueError, match=f"target {V} is outside"):
        lm_loss(h, w, t, chunk=4)


def test_model_head_through_lm_loss_matches_logits():
    from banyan.config import ModelConfig
    from banyan.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="llama", vocab_size=97, n_layer=1, n_head=2, d_model=32, max_seq_len=16))
    x = torch.randint(0, 97, (2, 9))
    ref = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    out = lm_loss(model.hidden_states(x[:, :-1]), model.output_weight(), x[:, 1:], chunk=5)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
