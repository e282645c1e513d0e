"""Helpers for tests/gpu: tiny models on CUDA, fixed batches, a few AdamW steps."""

from __future__ import annotations

import copy

import torch

from banyan.model.config import ModelConfig


def tiny_cfg(arch: str = "llama", **kw) -> ModelConfig:
    """A ~1M-parameter model with head_dim 64 (the presets' head size, so SDPA picks the same kernels)."""
    base = dict(arch=arch, vocab_size=512, n_layer=2, n_head=4, n_kv_head=2 if arch == "llama" else 0, d_model=256,
                max_seq_len=256)
    base.update(kw)
    c = ModelConfig(**base)
    c.finalize()
    return c


def tiny_model(cfg: ModelConfig | None = None, seed: int = 0, device: str = "cuda") -> torch.nn.Module:
    from banyan.model import build_model

    torch.manual_seed(seed)
    return build_model(copy.deepcopy(cfg or tiny_cfg()), device="cpu").to(device)


def batches(n: int, b: int = 8, t: int = 128, vocab: int = 512, seed: int = 0, device: str = "cuda"):
    """n batches of a learnable stream: 16 fixed random sequences, drawn again and again."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randint(0, vocab, (16, t + 1), generator=g)
    idx = torch.randint(0, 16, (n, b), generator=g)
    return [pool[i].to(device) for i in idx]


def train_losses(model, data, autocast: bool, lr: float = 3e-3, fused: bool = True) -> list[float]:
    """Plain AdamW steps on `data` ([B, T+1] each); the loss of each step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=fused, foreach=None if fused else True)
    out = []
    for x in data:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(loss.item())
    return out


def strict_fp32():
    """Exact fp32 matmuls (no TF32), so parity tests compare like with like."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
