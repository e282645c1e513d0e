"""CPU bf16/fp16 autocast runs SDPA in fp32 where that is faster (banyan.model.common.fp32_attention_pays)."""

import pytest
import torch
import torch.nn.functional as F

from banyan.model.common import causal_attention, fp32_attention_pays


def _qkv(T: int, hd: int, dtype=torch.bfloat16, kv_heads: int = 2, grad: bool = True):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, T, hd, generator=g).to(dtype).requires_grad_(grad)
    k = torch.randn(2, kv_heads, T, hd, generator=g).to(dtype).requires_grad_(grad)
    v = torch.randn(2, kv_heads, T, hd, generator=g).to(dtype).requires_grad_(grad)
    return q, k, v


@pytest.mark.parametrize("T,hd,dtype,expected", [
    (64, 32, torch.bfloat16, True),     # nanoGPT's CPU shape: the kernel's 32-row blocks
    (128, 64, torch.bfloat16, True),    # the shakespeare preset
    (256, 32, torch.bfloat16, True),    # 64-row blocks, head_dim 32
    (256, 64, torch.bfloat16, False),   # bf16's own kernel is as fast from here on
    (1024, 32, torch.bfloat16, False),  # 256-row blocks
    (1024, 64, torch.float16, True),    # fp16 loses at every shape measured
    (64, 32, torch.float32, False),     # already fp32
])
def test_fp32_attention_pays_by_shape_and_dtype(T, hd, dtype, expected):
    q, _, _ = _qkv(T, hd, dtype)
    assert fp32_attention_pays(q) is expected


def test_grad_mode_does_not_change_the_result():
    """A reference or rollout forward (no grad) must give the trained forward's numbers bit for bit
    (DPO starts at exactly ln 2, GRPO's ratio at exactly 1)."""
    q, k, v = _qkv(64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with_grad = causal_attention(q, k, v)
        with torch.no_grad():
            assert fp32_attention_pays(q.detach())
            without = causal_attention(q, k, v)
    assert torch.equal(with_grad.detach(), without)


def test_sdpa_runs_in_fp32_under_cpu_autocast_and_returns_bf16(monkeypatch):
    """Autocast would cast fp32 inputs of SDPA back to bf16; the upcast path must really reach the kernel in fp32."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        out = sdpa(q, k, v, **kw)
        seen.append((q.dtype, out.dtype))
        return out

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    q, k, v = _qkv(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = causal_attention(q, k, v)
    assert seen == [(torch.float32, torch.float32)]
    assert out.dtype == torch.bfloat16
    q, k, v = _qkv(256, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        causal_attention(q, k, v)
    assert seen[-1] == (torch.bfloat16, torch.bfloat16)  # where bf16's kernel is as fast, it stays bf16


@pytest.mark.parametrize("doc_ids", [False, True])
def test_fp32_path_matches_fp32_attention_and_its_gradients(doc_ids):
    q, k, v = _qkv(16, 8)
    ids = torch.tensor([[0] * 6 + [1] * 10, [0] * 16]) if doc_ids else None
    ref = [t.detach().float().requires_grad_() for t in (q, k, v)]
    out = causal_attention(q, k, v, doc_ids=ids)
    want = causal_attention(*ref, doc_ids=ids)
    g = torch.randn_like(want)
    out.float().backward(g)
    want.backward(g)
    assert out.dtype == torch.bfloat16
    assert (out.float() - want).abs().max() <= 2 ** -7 * want.abs().max()  # one bf16 rounding of the output
    for got, exp in zip((q, k, v), ref):
        assert got.grad.dtype == torch.bfloat16
        assert (got.grad.float() - exp.grad).abs().max() <= 2 ** -7 * exp.grad.abs().max()


def test_cached_prefix_with_grad_keeps_the_offset_mask():
    """A query block after a cached prefix (T != S) goes through the same fp32 path with the shifted mask."""
    q, k, v = _qkv(16, 8)
    out = causal_attention(q[:, :, 8:], k, v, start_pos=8)
    want = causal_attention(*(t.detach().float() for t in (q, k, v)))[:, :, 8:]
    assert (out.float() - want).abs().max() <= 2 ** -7 * want.abs().max()
