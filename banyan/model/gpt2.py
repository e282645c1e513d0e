"""GPT-2 (Radford et al. 2019): learned positions, pre-norm LayerNorm with biases, GELU MLP, tied head.

GELU is exact by default and GPT-2's tanh approximation for imported checkpoints (ModelConfig.activation).
`ModelConfig.bias = False` drops every bias (Linear and LayerNorm), as nanoGPT's default does.

Parameter names are Hugging Face's `GPT2LMHeadModel` ones (`transformer.h.{i}.attn.c_attn`, ...),
but every projection is an `nn.Linear` ([out, in]); HF's Conv1D stores [in, out], so `hf.py`
transposes those four weights when converting.

Shapes: B batch, T sequence, D d_model, H heads, hd head_dim, F d_ff, V vocab.
"""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from banyan.model.config import ModelConfig
from banyan.errors import ConfigError
from banyan.model.common import CausalLM, KVCache, causal_attention, embedding


class Attention(nn.Module):
    """Multi-head causal self-attention with a fused q,k,v projection (c_attn: D -> 3D, order q|k|v)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx, self.n_head, self.head_dim, self.dropout = layer_idx, cfg.n_head, cfg.head_dim, cfg.dropout
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None, start_pos: int,
                doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=-1)  # 3 x [B, T, D]
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # [B, H, T, hd]
        if cache is not None:
            k, v = cache.update(self.layer_idx, start_pos, k, v)  # [B, H, start_pos+T, hd]
        y = causal_attention(q, k, v, start_pos, self.dropout if self.training else 0.0, doc_ids)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, D)))


class MLP(nn.Module):
    """c_proj(gelu(c_fc(x))): exact GELU, or the tanh approximation (HF `gelu_new`, the one GPT-2 was trained
    with) when cfg.activation is gelu_tanh."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = Attention(cfg, layer_idx)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, start_pos: int = 0,
                doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, start_pos, doc_ids)
        return x + self.mlp(self.ln_2(x))


class GPT2(CausalLM):
    """GPT-2 causal LM; `transformer.*` and `lm_head` mirror HF's GPT2LMHeadModel. The head is always tied."""

    residual_out_names = ("c_proj",)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.n_kv_head != cfg.n_head:
            raise ConfigError(f"gpt2 has no grouped-query attention: model.n_kv_head ({cfg.n_kv_head}) must equal "
                              f"model.n_head ({cfg.n_head}) or be 0")
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=embedding(cfg.vocab_size, cfg.d_model),
            wpe=embedding(cfg.max_seq_len, cfg.d_model),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None, start_pos: int = 0,
                      position_ids: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.size(1)
        self.check_positions(start_pos, T)
        # [T] absolute positions, or [B, T] per-token positions of packed documents
        pos = torch.arange(start_pos, start_pos + T, device=input_ids.device) if position_ids is None else position_ids
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(pos))  # [B, T, D]
        for block in self.transformer.h:
            x = block(x, cache, start_pos, doc_ids)
        return self.transformer.ln_f(x)

    def output_weight(self) -> torch.Tensor:
        return self.lm_head.weight

    def blocks(self) -> nn.ModuleList:
        return self.transformer.h

    def embedding_params(self) -> list[nn.Parameter]:
        return [self.transformer.wte.weight, self.transformer.wpe.weight]
