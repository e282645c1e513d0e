"""CUDA numerics: bf16 autocast vs fp32, fused vs foreach AdamW, compile vs eager, SDPA kernels, KV cache,
chunked loss. Skipped without CUDA (and kept out of `make test` by the gpu marker); `make gpu-check` runs them."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from gpukit import batches, strict_fp32, tiny_cfg, tiny_model, train_losses  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(autouse=True)
def _fp32():
    strict_fp32()


def test_bf16_autocast_tracks_fp32_over_50_steps():
    """Tolerance: the mean loss of each 10-step window within 5% + 0.02 of fp32's (single steps of a run that
    memorises 16 sequences drift apart chaotically, windows do not); both learn (last window < 85% of the first)."""
    data = batches(50)
    fp32 = train_losses(tiny_model(), data, autocast=False, lr=1e-3)
    bf16 = train_losses(tiny_model(), data, autocast=True, lr=1e-3)
    windows = [(sum(fp32[i:i + 10]) / 10, sum(bf16[i:i + 10]) / 10) for i in range(0, 50, 10)]
    for i, (a, b) in enumerate(windows):
        assert abs(a - b) <= 0.02 + 0.05 * a, f"steps {10 * i}-{10 * i + 9}: fp32 {a:.4f} vs bf16 {b:.4f}"
    assert windows[-1][0] < 0.85 * windows[0][0] and windows[-1][1] < 0.85 * windows[0][1]
    assert abs(fp32[0] - bf16[0]) < 0.02  # the same model and batch: only rounding apart at step 0


def test_fused_adamw_equals_foreach_adamw():
    """Same grads, 10 steps: parameters within 1e-6 (fp32; the fused kernel reorders a few flops)."""
    a, b = tiny_model(), tiny_model()
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=0.1, foreach=True)
    for x in batches(10):
        for model, opt in ((a, opt_a), (b, opt_b)):
            torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_compile_equals_eager_forward_and_grads():
    """Tolerance: logits and every gradient within rtol 1e-3, atol 1e-4 (fp32; inductor fuses and reorders)."""
    eager, comp = tiny_model(), tiny_model()
    compiled = torch.compile(comp)
    x = batches(1)[0]
    outs = []
    for model, call in ((eager, eager), (comp, compiled)):
        logits = call(x[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
        outs.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-3, atol=1e-4)
    for n, g in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][n], g, rtol=1e-3, atol=1e-4, msg=lambda m: f"grad {n}: {m}")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sdpa_runs_on_flash_or_efficient_kernels_for_our_shapes(arch):
    """The model's attention (GQA for Llama, head_dim 64, bf16, seq 2048) runs with SDPA restricted to the flash
    and memory-efficient kernels (no silent fall-back to the math kernel), forward and backward, and matches
    the math kernel within bf16 tolerance."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = tiny_cfg(arch, max_seq_len=2048)
    model = tiny_model(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 2048), device="cuda")
    results = []
    for backends in ([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION], [SDPBackend.MATH]):
        model.zero_grad(set_to_none=True)
        with sdpa_kernel(backends), torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x)
            logits.float().logsumexp(-1).mean().backward()
        results.append(logits.float())
    torch.testing.assert_close(results[0], results[1], rtol=0.05, atol=0.05)
    # and the raw call at llama-125m's shapes: 12 query heads over 4 KV heads, each kernel alone
    q = torch.randn(2, 12, 2048, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(2, 4, 2048, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    ran = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).sum().backward()
            ran.append(backend.name)
        except RuntimeError:
            pass
    assert ran, "neither the flash nor the efficient SDPA kernel accepts GQA at head_dim 64"


def test_kv_cache_generation_equals_full_forward():
    """Prefill 16 tokens, then 48 one at a time through the cache: logits equal the full forward's (fp32,
    atol 1e-4), and greedy continuation picks the same tokens."""
    model = tiny_model().eval()
    x = batches(1, b=2, t=64)[0][:, :64]
    with torch.no_grad():
        full = model(x)
        cache = model.make_cache(2, 64)
        steps = [model(x[:, :16], cache=cache, start_pos=0)]
        for t in range(16, 64):
            steps.append(model(x[:, t:t + 1], cache=cache, start_pos=t))
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


def test_chunked_loss_equals_plain_loss_in_bf16():
    """Tolerance: loss within 1e-3 relative, grads of hidden and weight within rtol 2e-2, atol 1e-3 (bf16 logits)."""
    from banyan.losses import lm_loss

    g = torch.Generator(device="cuda").manual_seed(0)
    h0 = torch.randn(4, 256, 256, device="cuda", generator=g)
    w0 = torch.randn(4096, 256, device="cuda", generator=g) * 0.05
    y = torch.randint(0, 4096, (4, 256), device="cuda", generator=g)
    y[0, :10] = -100
    res = []
    for chunk in (0, 300):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = lm_loss(h, w, y, chunk=chunk)
        loss.backward()
        res.append((loss.detach().float(), h.grad, w.grad))
    torch.testing.assert_close(res[1][0], res[0][0], rtol=1e-3, atol=0)
    torch.testing.assert_close(res[1][1], res[0][1], rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(res[1][2], res[0][2], rtol=2e-2, atol=1e-3)
