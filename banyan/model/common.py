"""Pieces shared by both model families: KV cache, causal attention, sampling, generation, counting.

`llama.py` and `gpt2.py` subclass `CausalLM`. A subclass provides `hidden_states` (after the final
norm), `output_weight` (the head, [V, D]), `blocks`, `init_weights` and `embedding_params`; this
base class turns those into logits, KV-cached generation, parameter counts and a FLOPs estimate.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from banyan.errors import BanyanError
from banyan.model.config import ModelConfig


class KVCache:
    """Pre-allocated keys and values of every layer: `k[i]`, `v[i]` are [B, n_kv_head, max_len, head_dim].

    `update(layer, start_pos, k, v)` writes positions start_pos..start_pos+T-1 and returns the keys
    and values of positions 0..start_pos+T-1, which is everything a query at those positions may see.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0  # positions written by the latest update (0..length-1 are valid)

    def update(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v: [B, n_kv_head, T, head_dim]
        end = start_pos + k.size(2)
        if end > self.max_len:
            raise BanyanError(f"KV cache holds {self.max_len} positions; got positions {start_pos}..{end - 1}")
        if k.size(0) != self.batch_size:
            raise BanyanError(f"KV cache was made for batch size {self.batch_size}; got {k.size(0)}")
        self.k[layer][:, :, start_pos:end] = k
        self.v[layer][:, :, start_pos:end] = v
        self.length = end
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask [B, 1, T, T] (True = attend) for packed sequences: query i sees key j
    when j <= i and both belong to the same document (doc_ids [B, T], one segment id per position)."""
    T = doc_ids.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return (causal & (doc_ids[:, :, None] == doc_ids[:, None, :]))[:, None]


def fp32_attention_pays(q: torch.Tensor) -> bool:
    """Whether SDPA (forward + backward) is faster on q, k, v upcast to fp32 than in their reduced dtype (CPU).

    PyTorch's CPU flash kernel splits queries into blocks of 32 rows below 192 positions and of 64 below 768
    (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp), and its backward runs five small gemms per block;
    in bf16 those are several times slower than in fp32 when a block dimension (query rows or head_dim) is
    32. Forward + backward per layer, 1 thread, AMX-BF16 CPU (B*T = 2048 tokens, 4 heads, ms):

        head_dim  T    fp32   bf16   bf16 upcast     head_dim  T     fp32   bf16   bf16 upcast
        32        64   4.4    22.1   5.7             64        128   13.6   28.7   15.7
        32        256  11.0   17.2   12.9            64        256   22.1   22.5   25.5
        32        1024 27.2   27.2   29.3            64        1024  52.5   35.4   52.8

    fp16 loses at every shape measured (22 vs 5.7 ms at 32/64, 64 vs 52 at 64/1024). The choice depends on
    the device, dtype and shape only, never on grad mode: a reference model's or the rollout policy's
    log-probs (no grad) must equal the trained policy's (DPO's loss is exactly ln 2 at the start, GRPO's
    ratio exactly 1). Forward alone the bf16 kernel would be ~1.3x faster at T=64 (0.9 vs 1.2 ms), a
    small share of an evaluation."""
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16):
        return False
    T, hd = q.size(2), q.size(3)
    return q.dtype == torch.float16 or T < 192 or (hd <= 32 and T < 768)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int = 0,
                     dropout_p: float = 0.0, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Causal (grouped-query) attention through `F.scaled_dot_product_attention`.

    q: [B, n_head, T, hd] at absolute positions start_pos..start_pos+T-1; k, v: [B, n_kv_head, S, hd]
    at positions 0..S-1 (S = start_pos+T with a cache, S = T without). Returns [B, n_head, T, hd].
    doc_ids [B, T] (packed documents, no cache): attention stays inside each document (document_mask).
    """
    if fp32_attention_pays(q):  # CPU bf16/fp16 at short contexts: see fp32_attention_pays
        # CPU autocast lists SDPA as a lower-precision op and would cast the fp32 inputs straight back
        with torch.autocast("cpu", enabled=False):
            return _sdpa(q.float(), k.float(), v.float(), start_pos, dropout_p, doc_ids).to(q.dtype)
    return _sdpa(q, k, v, start_pos, dropout_p, doc_ids)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int, dropout_p: float,
          doc_ids: torch.Tensor | None) -> torch.Tensor:
    T, S = q.size(2), k.size(2)
    # the cache may be stored in another dtype than autocast computes q in
    k, v = k.to(q.dtype), v.to(q.dtype)
    gqa = k.size(1) != q.size(1)
    if doc_ids is not None:
        if T != S:
            raise BanyanError("doc_ids (packed documents) cannot be combined with a KV cache prefix")
        return F.scaled_dot_product_attention(q, k, v, attn_mask=document_mask(doc_ids), dropout_p=dropout_p,
                                              enable_gqa=gqa)
    if T == S:  # no cached prefix: the plain causal mask (fast kernels)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa)
    mask = None
    if T > 1:
        # SDPA's is_causal aligns the mask top-left when T != S, which is wrong after a cached prefix;
        # query i sits at position start_pos+i and may see keys 0..start_pos+i. mask: [T, S], True = attend.
        q_pos = torch.arange(start_pos, start_pos + T, device=q.device)
        mask = torch.arange(S, device=q.device)[None, :] <= q_pos[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick next tokens from logits [B, V]; returns [B]. temperature 0 is greedy (argmax).

    top_k keeps the k most likely tokens; top_p keeps the smallest set of most likely tokens whose
    probability reaches top_p (nucleus sampling, Holtzman et al. 2019); both may be combined.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p; the first is always kept
        drop = probs.cumsum(dim=-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def embedding(num: int, dim: int) -> nn.Embedding:
    """nn.Embedding(num, dim) without its default init: init_weights() initialises every model.

    The default normal_() on the meta device runs torch's Python reference kernel, whose first call imports
    torch._dynamo: 2-6 s of every process's start-up for an init that is thrown away.
    """
    return nn.Embedding(num, dim, _weight=torch.empty(num, dim))


def to_empty(model: nn.Module, device: torch.device) -> None:
    """Allocate (uninitialised) storage for a meta-device model on `device`, keeping tied parameters tied.

    Module.to_empty normally creates new Parameter objects, which silently unties a shared
    embedding/head; swapping tensors in place keeps the Parameter objects (and their sharing)."""
    old = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to_empty(device=device)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(old)


class CausalLM(nn.Module, abc.ABC):
    """Interface shared by the Llama and GPT-2 models (the trainer, FSDP wrapper and losses rely on it)."""

    config: ModelConfig

    # ------------------------------------------------------------------ implemented per architecture
    @abc.abstractmethod
    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None, start_pos: int = 0,
                      position_ids: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] -> final-norm hidden states [B, T, D].

        Packed sequences pass position_ids [B, T] (positions restart at 0 in each document) and
        doc_ids [B, T] (segment ids; attention stays inside a segment); both None is the plain path."""

    @abc.abstractmethod
    def output_weight(self) -> torch.Tensor:
        """The output head weight [V, D] (the token embedding when tied)."""

    @abc.abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, for per-block FSDP wrapping and activation checkpointing."""

    # names of the linear layers that write into the residual stream (scaled-down init)
    residual_out_names: tuple[str, ...] = ()

    def init_plan(self) -> list[tuple[str, nn.Parameter, str, float]]:
        """How every parameter is initialised, in the order the draws happen: (name, param, kind, std).

        kind is "normal" (N(0, std) from the global generator), "zeros" or "ones". N(0, init_std) linear
        and embedding weights, zero biases, unit norm gains; the projections that write into the residual
        stream get init_std/sqrt(2*n_layer) so its variance does not grow with depth (GPT-2 paper, 2.3).
        A tied head appears twice (embedding, then head): the second draw is the one that stays.
        LoRA adapters (banyan.model.lora) come last, "uniform" (value = bound) A and "zeros" B, so the base
        draws are those of a plain model. banyan.parallel.materialize replays this plan shard by shard.
        """
        from banyan.model.lora import lora_init_plan

        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.n_layer)
        plan = []
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                plan.append((f"{name}.weight", module.weight, "normal",
                             out_std if name.endswith(self.residual_out_names) else std))
                if module.bias is not None:
                    plan.append((f"{name}.bias", module.bias, "zeros", 0.0))
            elif isinstance(module, nn.Embedding):
                plan.append((f"{name}.weight", module.weight, "normal", std))
            elif module is not self and isinstance(getattr(module, "weight", None), torch.Tensor) \
                    and module.weight.ndim == 1:  # LayerNorm / RMSNorm
                plan.append((f"{name}.weight", module.weight, "ones", 1.0))
                if getattr(module, "bias", None) is not None:
                    plan.append((f"{name}.bias", module.bias, "zeros", 0.0))
        return plan + lora_init_plan(self)

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re-)initialise every parameter by `init_plan()`; deterministic under torch.manual_seed."""
        for _, param, kind, std in self.init_plan():
            if kind == "normal":
                nn.init.normal_(param, 0.0, std)
            elif kind == "uniform":
                nn.init.uniform_(param, -std, std)
            elif kind == "zeros":
                nn.init.zeros_(param)
            else:
                nn.init.ones_(param)

    @abc.abstractmethod
    def embedding_params(self) -> list[nn.Parameter]:
        """Token embedding (and learned position) parameters, left out by num_params(exclude_embeddings=True)."""

    # ------------------------------------------------------------------ shared
    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None, start_pos: int = 0,
                return_hidden: bool = False, position_ids: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, V]; with a cache, appends K/V of positions start_pos.. first.

        return_hidden=True returns the final hidden states [B, T, D] instead, through forward so that
        DDP/FSDP hooks still run; a chunked loss then multiplies them by output_weight() piecewise.
        position_ids / doc_ids [B, T]: packed documents (see hidden_states).
        """
        if position_ids is None and doc_ids is None:
            hidden = self.hidden_states(input_ids, cache, start_pos)  # the plain path, exactly as before
        else:
            self.check_packed(input_ids, cache, position_ids, doc_ids)
            hidden = self.hidden_states(input_ids, cache, start_pos, position_ids=position_ids, doc_ids=doc_ids)
        return hidden if return_hidden else F.linear(hidden, self.output_weight())

    def check_packed(self, input_ids, cache, position_ids, doc_ids) -> None:
        if cache is not None:
            raise BanyanError("position_ids/doc_ids (packed documents) are for training; generation uses the cache")
        for name, t in (("position_ids", position_ids), ("doc_ids", doc_ids)):
            if t is not None and t.shape != input_ids.shape:
                raise BanyanError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, "
                                  f"got {tuple(t.shape)}")
        if position_ids is not None and position_ids.numel() and int(position_ids.max()) >= self.config.max_seq_len:
            raise BanyanError(f"position_ids reach {int(position_ids.max())}, outside the model's context "
                              f"(model.max_seq_len = {self.config.max_seq_len})")

    def check_positions(self, start_pos: int, length: int) -> None:
        if start_pos < 0 or start_pos + length > self.config.max_seq_len:
            raise BanyanError(f"positions {start_pos}..{start_pos + length - 1} are outside the model's context "
                              f"(model.max_seq_len = {self.config.max_seq_len})")

    def make_cache(self, batch_size: int, max_len: int | None = None, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for up to `max_len` positions (default max_seq_len), on the model's device/dtype."""
        c, w = self.config, self.output_weight()
        max_len = c.max_seq_len if max_len is None else max_len
        if max_len > c.max_seq_len:
            raise BanyanError(f"cache length {max_len} exceeds model.max_seq_len ({c.max_seq_len})")
        return KVCache(c.n_layer, batch_size, c.n_kv_head, max_len, c.head_dim,
                       device=w.device if device is None else device, dtype=w.dtype if dtype is None else dtype)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters, tied weights counted once (`parameters()` de-duplicates them).

        exclude_embeddings drops the token embedding and learned positions (a tied head goes with
        the token embedding, since it is the same tensor; an untied head is kept).
        """
        skip = {id(p) for p in self.embedding_params()} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def matmul_params(self) -> int:
        """Weights that take part in a matmul per token: every nn.Linear in the blocks plus the head [V, D]."""
        blocks = sum(m.weight.numel() for m in self.blocks().modules() if isinstance(m, nn.Linear))
        return blocks + self.output_weight().numel()

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward) at context length `seq_len`.

            6 * N + 12 * n_layer * d_model * seq_len

        N = matmul_params() (block linear weights + the V*D head; no embeddings lookups, norms or
        biases): 2 FLOPs per weight per token forward, 4 backward. The second term is the attention
        scores and weighted sum (QK^T and AV: 2 * 2 * d_model * seq_len per layer forward, x3 with
        backward), counted without the causal halving, as in PaLM (Chowdhery et al. 2022, appendix B)
        and nanoGPT's estimate_mfu.
        """
        c = self.config
        return 6.0 * self.matmul_params() + 12.0 * c.n_layer * c.d_model * seq_len

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, cache: KVCache, start_pos: int = 0) -> torch.Tensor:
        """Write the K/V of input_ids [B, T] at positions start_pos..start_pos+T-1 into `cache`; returns the
        logits [B, V] of the last position (what the next token is sampled from).

        Positions past start_pos+T that an earlier call wrote are simply ignored from then on, so
        prefilling at a smaller start_pos rewinds the cache to start_pos (no copy)."""
        return self(input_ids, cache=cache, start_pos=start_pos)[:, -1]

    @torch.no_grad()
    def stream(self, logits: torch.Tensor, cache: KVCache, start_pos: int, max_new_tokens: int,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """Sample up to max_new_tokens tokens [B], one per step, from the last-position `logits` [B, V] of a
        cache that holds positions 0..start_pos-1.

        Each token is yielded before it is fed, so a consumer that stops (break) after token n leaves the
        cache holding start_pos + n - 1 positions: every yielded token but the last. The caller keeps the
        model in eval mode and the positions inside the cache and model.max_seq_len.
        """
        for step in range(max_new_tokens):
            nxt = sample_logits(logits, temperature, top_k, top_p, generator)  # [B]
            yield nxt
            if step < max_new_tokens - 1:
                logits = self.prefill(nxt[:, None], cache, start_pos + step)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue each row of input_ids [B, T]; returns [B, T + n] with n <= max_new_tokens.

        The prompt is run once (prefill) into a KV cache, then one token per step (`stream`). A row that
        has produced eos_id is padded with eos_id afterwards; generation stops early once every row has.
        T + max_new_tokens must fit in model.max_seq_len, else a BanyanError is raised (no silent crop).
        Runs in eval mode (no dropout) and restores the previous mode.
        """
        if input_ids.dim() != 2:
            raise BanyanError(f"generate expects input_ids of shape [B, T], got {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if T == 0:
            raise BanyanError("generate needs a prompt of at least one token")
        if T + max_new_tokens > self.config.max_seq_len:
            raise BanyanError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                              f"model.max_seq_len ({self.config.max_seq_len}); shorten the prompt or ask for fewer tokens")
        was_training = self.training
        self.eval()
        try:
            cache = self.make_cache(B, T + max_new_tokens, device=input_ids.device)
            logits = self.prefill(input_ids, cache)
            out = [input_ids]
            done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
            # a finished row keeps being fed its sampled tokens; rows are independent and its output is eos
            for nxt in self.stream(logits, cache, T, max_new_tokens, temperature, top_k, top_p, generator):
                if eos_id is not None:
                    nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                    done |= nxt == eos_id
                out.append(nxt[:, None])
                if eos_id is not None and bool(done.all()):
                    break
            return torch.cat(out, dim=1)
        finally:
            self.train(was_training)
