"""The Llama family: RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention, no biases.

Follows Touvron et al. 2023 (Llama 2) and Meta's Llama 3 reference code. Parameter names are the
Hugging Face `LlamaForCausalLM` ones (`model.layers.{i}.self_attn.q_proj`, ...), and RoPE uses HF's
`rotate_half` layout (dimension i pairs with i + head_dim/2), so HF checkpoints load unchanged.

Shapes: B batch, T sequence, D d_model, H query heads, Hkv key/value heads, hd head_dim, F d_ff, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from banyan.model.config import ModelConfig
from banyan.errors import ConfigError
from banyan.model.common import CausalLM, KVCache, causal_attention, embedding


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Zhang & Sennrich 2019); normalised in fp32, scaled in the input dtype, as HF does."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.type_as(x)


# ----------------------------------------------------------------------------- rotary positions
def rope_inv_freq(cfg: ModelConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """Inverse frequencies [hd/2]: theta^(-2i/hd) (Su et al. 2021), optionally Llama-3.1 scaled."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
    if cfg.rope_scaling == "llama3":
        inv_freq = llama3_scale(inv_freq, cfg)
    return inv_freq


def llama3_scale(inv_freq: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Llama 3.1 long-context scaling (Meta's `apply_scaling`): wavelengths longer than
    original_len/low_freq_factor are stretched by `factor`, shorter than original_len/high_freq_factor
    kept, and those in between interpolated smoothly."""
    old_len, factor = cfg.rope_original_max_seq_len, cfg.rope_factor
    low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)  # 0 at the low-frequency edge, 1 at the high one
    mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > old_len / low, inv_freq / factor, mid)
    return torch.where(wavelen < old_len / high, inv_freq, out)


def rope_cos_sin(cfg: ModelConfig, start_pos: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, hd] (fp32) for positions start_pos..start_pos+T-1, HF layout: both halves share frequencies.

    Computed per forward from the config rather than kept as buffers: nothing to lose on a meta-device
    build or a `.to(bfloat16)`, and no table of max_seq_len rows.
    """
    pos = torch.arange(start_pos, start_pos + length, device=device, dtype=torch.float32)
    freqs = pos[:, None] * rope_inv_freq(cfg, device)[None, :]  # [T, hd/2]; elementwise, so autocast leaves it fp32
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rope_cos_sin_at(cfg: ModelConfig, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, 1, T, hd] (fp32) at per-token positions position_ids [B, T] (packed documents)."""
    freqs = position_ids.float()[..., None] * rope_inv_freq(cfg, position_ids.device)  # [B, T, hd/2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, hd] by position: x*cos + rotate_half(x)*sin, rotate_half(a, b) = (-b, a)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


# ----------------------------------------------------------------------------- blocks
class Attention(nn.Module):
    """Grouped-query attention (Ainslie et al. 2023): Hkv key/value heads shared by H/Hkv query heads each."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx, self.n_head, self.n_kv_head, self.head_dim = layer_idx, cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None,
                start_pos: int, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # [B, Hkv, T, hd]
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, start_pos, k, v)  # [B, Hkv, start_pos+T, hd]
        y = causal_attention(q, k, v, start_pos, self.dropout if self.training else 0.0, doc_ids)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                start_pos: int = 0, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.input_layernorm(x), cos, sin, cache, start_pos, doc_ids))
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


# ----------------------------------------------------------------------------- model
class Llama(CausalLM):
    """Llama causal LM; `model.*` and `lm_head` mirror HF's LlamaForCausalLM."""

    residual_out_names = ("o_proj", "down_proj")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.rope_scaling == "llama3" and cfg.rope_high_freq_factor <= cfg.rope_low_freq_factor:
            raise ConfigError(f"model.rope_high_freq_factor ({cfg.rope_high_freq_factor}) must exceed "
                              f"model.rope_low_freq_factor ({cfg.rope_low_freq_factor}) for llama3 rope scaling")
        if cfg.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head_dim; model.d_model/model.n_head = {cfg.head_dim}")
        self.config = cfg
        self.model = nn.ModuleDict(dict(
            embed_tokens=embedding(cfg.vocab_size, cfg.d_model),
            layers=nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer)),
            norm=RMSNorm(cfg.d_model, cfg.norm_eps),
        ))
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None, start_pos: int = 0,
                      position_ids: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.size(1)
        self.check_positions(start_pos, T)
        x = self.model.embed_tokens(input_ids)  # [B, T, D]
        if position_ids is None:
            cos, sin = rope_cos_sin(self.config, start_pos, T, x.device)  # [T, hd]
        else:
            cos, sin = rope_cos_sin_at(self.config, position_ids)  # [B, 1, T, hd]
        for block in self.model.layers:
            x = block(x, cos, sin, cache, start_pos, doc_ids)
        return self.model.norm(x)

    def output_weight(self) -> torch.Tensor:
        return self.lm_head.weight

    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def embedding_params(self) -> list[nn.Parameter]:
        return [self.model.embed_tokens.weight]
