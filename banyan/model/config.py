"""`ModelConfig`: the architecture of a banyan transformer (Llama or GPT-2 family).

It lives next to the model so banyan/model needs nothing from banyan.config (which composes it
into `RunConfig`, and re-exports it). Derived sizes (n_kv_head, d_ff) are filled in one place,
`ModelConfig.finalize()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from banyan.errors import ConfigError


@dataclass
class ModelConfig:
    """Architecture of the transformer (Llama or GPT-2 family)."""

    arch: Literal["llama", "gpt2"] = "llama"
    """Model family: `llama` (RMSNorm, RoPE, SwiGLU, GQA, no biases) or `gpt2`."""
    bias: bool = True
    """gpt2: biases in every Linear and LayerNorm, GPT-2's own layout (and HF's). False drops them all, as
    nanoGPT's `bias=False` default does: as good a model from scratch and ~5-8% faster a step on a CPU at
    small widths (the bias broadcasts and their gradient sums). Exported to HF as zero biases, so the HF model
    computes the same function. llama never has biases (finalize sets False)."""
    vocab_size: int = 0
    """Vocabulary size; 0 takes it from the prepared data's tokenizer."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Number of query heads."""
    n_kv_head: int = 0
    """Number of key/value heads (grouped-query attention); 0 means n_head."""
    d_model: int = 256
    """Residual stream width."""
    d_ff: int = 0
    """MLP hidden width; 0 derives it (llama: 8/3*d_model rounded up to multiple_of; gpt2: 4*d_model)."""
    multiple_of: int = 64
    """Llama MLP width is rounded up to a multiple of this."""
    max_seq_len: int = 256
    """Longest context the model supports (learned positions for gpt2, RoPE cache for llama)."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rope_scaling: Literal["none", "llama3"] = "none"
    """Frequency scaling of RoPE; `llama3` applies Llama-3.1 style long-context scaling."""
    rope_factor: float = 8.0
    """llama3 scaling: overall factor."""
    rope_low_freq_factor: float = 1.0
    """llama3 scaling: low-frequency factor."""
    rope_high_freq_factor: float = 4.0
    """llama3 scaling: high-frequency factor."""
    rope_original_max_seq_len: int = 8192
    """llama3 scaling: the context length the base model was trained with."""
    norm_eps: float = 1e-5
    """Epsilon of RMSNorm / LayerNorm."""
    tie_embeddings: bool = True
    """Share the token embedding and the output head (always true for gpt2)."""
    dropout: float = 0.0
    """Dropout probability (attention and residual)."""
    init_std: float = 0.02
    """Std of the normal init; output projections are scaled by 1/sqrt(2*n_layer)."""
    activation: Literal["gelu", "gelu_tanh"] = "gelu"
    """gpt2 MLP activation. `gelu` (exact, erf) for runs from scratch, as nanoGPT does: 2.5x cheaper than
    `gelu_tanh` forward+backward on AVX2 CPUs, where ATen's tanh kernel is slow (1.0 vs 2.4 ms per layer at
    the nanoGPT CPU shape). `gelu_tanh` is GPT-2's own (HF `gelu_new`): imported HF GPT-2 models keep it so
    their logits match. Exported as HF `activation_function` gelu / gelu_new. llama always uses SiLU."""

    def finalize(self) -> "ModelConfig":
        """Fill derived values and check consistency; returns self."""
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        if self.d_model % self.n_head:
            raise ConfigError(f"model.d_model ({self.d_model}) must divide by model.n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"model.n_head ({self.n_head}) must divide by model.n_kv_head ({self.n_kv_head})")
        if self.d_ff == 0:
            if self.arch == "gpt2":
                self.d_ff = 4 * self.d_model
            else:
                hidden = int(2 * (4 * self.d_model) / 3)
                self.d_ff = self.multiple_of * math.ceil(hidden / self.multiple_of)
        if self.arch == "gpt2":
            self.tie_embeddings = True
        else:
            self.bias = False
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head
