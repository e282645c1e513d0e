"""The planner's byte model: parameter shapes, optimizer state, activations and buffers per GPU.

Training is bf16 mixed precision with fp32 master weights (what `banyan pretrain` does on CUDA:
fp32 parameters, autocast to bf16). Per parameter, before sharding:

    params   4 B   fp32 master weights
    grads    4 B   fp32 (autocast keeps .grad in the parameter's dtype)
    optim    adamw             8 B (exp_avg + exp_avg_sq fp32) + a 4 B `step` tensor per tensor
             adamw8bit (bnb)   2 B (uint8 moments) + 8 B per 256 values (fp32 absmax), for tensors
                               of >= 4096 values; smaller tensors keep 8 B fp32 moments; plus
                               2 KiB of quantisation maps shared by all tensors
             adamw8bit-torchao 2 B + 8 B per 256 values + 2 KiB qmaps per tensor (>= 4096 values
                               and a multiple of 256), else 8 B; a 4 B `step` per tensor
             muon              4 B momentum for the blocks' matrices; AdamW (8 B) for the rest

These are exact for one process: the tests compare them with bytes counted from real tensors.
Strategies as `banyan.parallel.wrap` implements them, on n GPUs:
  * ddp    everything replicated.
  * zero1  DDP + ZeroRedundancyOptimizer: optimizer state / n.
  * zero2  FSDP2, reshard_after_forward=False: params, grads, optimizer state / n at rest; the
           whole model's bf16 params stay gathered from forward to the end of backward.
  * zero3  FSDP2, reshard_after_forward=True: as zero2 but only ~2 blocks (+ the root unit:
           embedding, final norm, head) are gathered at a time.
zero2/zero3 assume FSDP mixed precision (`parallel.mixed_precision = true`: bf16 params, fp32
reduction). With gradient accumulation the trainer skips the reduce-scatter on all but the last
micro-batch (FSDP `set_requires_gradient_sync(False)`), so FSDP accumulates *unsharded* grads in
the reduce dtype: + reduce_bytes * N per GPU whenever accumulation > 1.

Activations are what autograd saves, per token per layer, measured from the banyan models with
saved-tensor hooks (`banyan plan --validate` re-checks them). With e = compute bytes (2 under bf16
autocast, 4 in fp32) and r = 4 (the residual stream stays fp32 under autocast):

    llama attention  r*D + 4 + 4*D (RMSNorm input, rstd, normalised x) + k_in*e*D (q/k/v inputs:
                     one shared tensor in fp32, three separate bf16 casts under autocast)
                     + e*(D + 2*Dkv) (rotated q, k and v saved by SDPA) + e*D (its output) + 4*H (lse)
    llama MLP        r*D + 4 + 4*D + m_in*e*D (gate/up inputs: 1 or 2) + 4*e*F (gate, up, silu, down input)
    gpt2 attention   r*D + 8 + e*D (LayerNorm input, mean, rstd; c_attn input) + 3*e*D (qkv) + e*D + 4*H
    gpt2 MLP         r*D + 8 + e*D + 2*e*F (c_fc output, GELU output)

Attention is flash/efficient SDPA: no T x T matrix is saved (if a GQA kernel expands k/v to all
heads, 2*e*(D - Dkv) more per token are saved). Llama's RoPE cos/sin [T, head_dim] are saved once
(fp32) or as bf16 casts per layer; GPT-2 saves its int64 positions. With activation checkpointing a
checkpointed block keeps only its input (r*D per token) and one block is live again while it is
recomputed in backward. The loss saves log_softmax's output (4*V per position) unless chunked.

Buffers (transient or non-activation memory at the peak, the start of backward):
  * bf16 weight copies made by autocast and saved for backward (2 B per matmul weight of the
    non-checkpointed blocks, plus one block being recomputed, plus the head) for single/ddp/zero1;
    zero2: the whole model gathered in bf16; zero3: two blocks (current + prefetched) and the root unit
  * zero2/zero3: one block's unsharded fp32 grads waiting for their reduce-scatter (x2 for overlap)
  * the logits: bf16 logits + their fp32 copy + the fp32 gradient, [tokens, V] (chunked: [chunk, V]);
    the chunked loss also holds a fp32 [V, D] weight-grad accumulator
  * on CUDA, a fixed 1.0 GiB for the CUDA context, cuBLAS workspaces and NCCL buffers, plus 5%
    of activations + buffers for allocator fragmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from banyan.model.config import ModelConfig

GiB = 2**30
CUDA_FIXED_BYTES = 1 * GiB  # CUDA context (~0.5 GiB) + cuBLAS workspaces + NCCL buffers
FRAGMENTATION = 0.05        # caching-allocator slack on activations + buffers
BNB_MIN_8BIT, BLOCK = 4096, 256
OPTIMIZERS = ("adamw", "adamw8bit", "adamw8bit-torchao", "muon")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor: HF-style name, shape and role (embed, pos, head, matrix, norm, bias)."""

    name: str
    shape: tuple[int, ...]
    kind: str
    frozen: bool = False
    """LoRA: a base weight (no grad, no optimizer state); kind "lora" marks the trainable adapters."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def param_specs(cfg: ModelConfig, lora_rank: int = 0, lora_targets: str = "") -> list[ParamSpec]:
    """Every parameter of the model `cfg` describes, in `named_parameters()` order (tied head once);
    with lora_rank > 0 the base is frozen and each targeted matrix is followed (after its bias) by its
    adapters A [r, in] and B [out, r], as banyan.model.lora.apply_lora registers them."""
    specs = _base_specs(cfg)
    if lora_rank <= 0:
        return specs
    from banyan.model.lora import check_targets

    targets = check_targets(lora_targets)
    out: list[ParamSpec] = []
    for i, s in enumerate(specs):
        out.append(ParamSpec(s.name, s.shape, s.kind, frozen=True))
        mod = s.name.rsplit(".", 1)[0]
        last_of_module = i + 1 == len(specs) or specs[i + 1].name.rsplit(".", 1)[0] != mod
        owner = next((t for t in specs if t.name == mod + ".weight"), None)
        if last_of_module and owner is not None and owner.kind == "matrix" and mod.rsplit(".", 1)[-1] in targets:
            n_out, n_in = owner.shape
            out += [ParamSpec(mod + ".lora_A", (lora_rank, n_in), "lora"),
                    ParamSpec(mod + ".lora_B", (n_out, lora_rank), "lora")]
    return out


def trainable(specs: list[ParamSpec]) -> list[ParamSpec]:
    return [s for s in specs if not s.frozen]


def _base_specs(cfg: ModelConfig) -> list[ParamSpec]:
    cfg.finalize()
    V, D, F, L = cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.n_layer
    hq, hkv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    out: list[ParamSpec] = []
    if cfg.arch == "llama":
        out.append(ParamSpec("model.embed_tokens.weight", (V, D), "embed"))
        for i in range(L):
            p = f"model.layers.{i}."
            out += [ParamSpec(p + "input_layernorm.weight", (D,), "norm"),
                    ParamSpec(p + "self_attn.q_proj.weight", (hq, D), "matrix"),
                    ParamSpec(p + "self_attn.k_proj.weight", (hkv, D), "matrix"),
                    ParamSpec(p + "self_attn.v_proj.weight", (hkv, D), "matrix"),
                    ParamSpec(p + "self_attn.o_proj.weight", (D, hq), "matrix"),
                    ParamSpec(p + "post_attention_layernorm.weight", (D,), "norm"),
                    ParamSpec(p + "mlp.gate_proj.weight", (F, D), "matrix"),
                    ParamSpec(p + "mlp.up_proj.weight", (F, D), "matrix"),
                    ParamSpec(p + "mlp.down_proj.weight", (D, F), "matrix")]
        out.append(ParamSpec("model.norm.weight", (D,), "norm"))
        if not cfg.tie_embeddings:
            out.append(ParamSpec("lm_head.weight", (V, D), "head"))
        return out
    out += [ParamSpec("transformer.wte.weight", (V, D), "embed"),
            ParamSpec("transformer.wpe.weight", (cfg.max_seq_len, D), "pos")]
    for i in range(L):
        p = f"transformer.h.{i}."
        for mod, shape in (("ln_1", None), ("attn.c_attn", (3 * D, D)), ("attn.c_proj", (D, D)), ("ln_2", None),
                           ("mlp.c_fc", (F, D)), ("mlp.c_proj", (D, F))):
            if shape is None:  # LayerNorm: gain (and bias)
                out.append(ParamSpec(p + mod + ".weight", (D,), "norm"))
            else:
                out.append(ParamSpec(p + mod + ".weight", shape, "matrix"))
            if cfg.bias:
                out.append(ParamSpec(p + mod + ".bias", shape[:1] if shape else (D,), "bias"))
    out.append(ParamSpec("transformer.ln_f.weight", (D,), "norm"))
    if cfg.bias:
        out.append(ParamSpec("transformer.ln_f.bias", (D,), "bias"))
    return out


def n_params(specs: list[ParamSpec]) -> int:
    return sum(s.numel for s in specs)


def matmul_params(cfg: ModelConfig, specs: list[ParamSpec]) -> int:
    """Weights used in a matmul per token: block matrices + the [V, D] head (tied or not)."""
    return sum(s.numel for s in specs if s.kind == "matrix") + cfg.vocab_size * cfg.d_model


def block_matmul_params(cfg: ModelConfig, specs: list[ParamSpec]) -> int:
    """Matmul weights of ONE block."""
    return sum(s.numel for s in specs if s.kind == "matrix") // cfg.n_layer


def optimizer_state_bytes(specs: list[ParamSpec], optim: str) -> int:
    """Exact optimizer-state bytes on one process (see module docstring for the per-optimizer model)."""
    total, any_8bit = 0, False
    for s in specs:
        n = s.numel
        if optim == "adamw":
            total += 8 * n + 4
        elif optim == "adamw8bit":
            if n >= BNB_MIN_8BIT:
                total += 2 * n + 8 * math.ceil(n / BLOCK)
                any_8bit = True
            else:
                total += 8 * n  # bnb's `step` is a Python int
        elif optim == "adamw8bit-torchao":
            quantised = n >= 4096 and n % BLOCK == 0
            total += 4 + (2 * n + 8 * (n // BLOCK) + 2 * 256 * 4 if quantised else 8 * n)
        elif optim == "muon":
            total += 4 * n if s.kind in ("matrix", "lora") else 8 * n + 4  # Muon takes every 2-D block weight
        else:
            raise ValueError(f"unknown optimizer {optim!r}; expected one of {OPTIMIZERS}")
    return total + (2 * 256 * 4 if any_8bit else 0)


def static_bytes(specs: list[ParamSpec], optim: str) -> dict[str, int]:
    """Unsharded params (fp32), grads (fp32) and optimizer state, in bytes; frozen (LoRA base) parameters
    have neither grads nor optimizer state."""
    train = trainable(specs)
    return {"params": 4 * n_params(specs), "grads": 4 * n_params(train), "optim": optimizer_state_bytes(train, optim)}


def layer_bytes_per_token(cfg: ModelConfig, e: int, r: int = 4) -> float:
    """Bytes autograd saves per token in one block (module docstring), compute bytes e, residual bytes r."""
    D, F, H = cfg.d_model, cfg.d_ff, cfg.n_head
    if cfg.arch == "llama":
        dkv = cfg.n_kv_head * cfg.head_dim
        k_in, m_in = (1, 1) if e == r else (3, 2)
        attn = r * D + 4 + 4 * D + k_in * e * D + e * (D + 2 * dkv) + e * D + 4 * H
        mlp = r * D + 4 + 4 * D + m_in * e * D + 4 * e * F
    else:
        attn = r * D + 8 + e * D + 3 * e * D + e * D + 4 * H
        mlp = r * D + 8 + e * D + 2 * e * F
    return attn + mlp


def n_checkpointed(n_layer: int, ac: str) -> int:
    """Blocks checkpointed by banyan.parallel.ac: all (full), the even-indexed ones (selective), none."""
    return {"none": 0, "full": n_layer, "selective": (n_layer + 1) // 2}[ac]


def activation_bytes(cfg: ModelConfig, micro_batch: int, seq: int, ac: str, chunk: int, e: int,
                     r: int = 4) -> dict[str, float]:
    """Saved activations of one micro-batch: blocks, and the rest (embedding ids, final norm, loss, positions)."""
    tokens = micro_batch * seq
    D, V, L = cfg.d_model, cfg.vocab_size, cfg.n_layer
    per_layer = layer_bytes_per_token(cfg, e, r)
    c = n_checkpointed(L, ac)
    blocks = tokens * (c * r * D + (L - c) * per_layer + (per_layer if c else 0))
    final_norm = r * D + 4 + 4 * D if cfg.arch == "llama" else r * D + 8
    head_in = r * D if chunk else e * D  # chunked loss saves the fp32 hidden itself; plain saves its cast
    loss = 4 + 8 if chunk else 4 * V + 8  # lse / log_softmax output, + int64 targets
    if cfg.arch == "llama":  # cos, sin [T, hd] fp32 shared by all layers, or their casts per layer (q and k)
        pos = 2 * seq * cfg.head_dim * 4 if e == 4 else L * 4 * seq * cfg.head_dim * e
    else:
        pos = 8 * seq  # int64 positions for the learned position embedding
    other = tokens * (8 + final_norm + head_in + loss) + pos
    return {"blocks": blocks, "other": other, "total": blocks + other}


def logits_buffer_bytes(cfg: ModelConfig, tokens: int, chunk: int, e: int) -> float:
    """Transient loss memory beyond what is saved: logits and their gradient (see module docstring)."""
    V, D = cfg.vocab_size, cfg.d_model
    cast = e if e != 4 else 0  # bf16 logits before the fp32 upcast
    if chunk:
        return min(chunk, tokens) * V * (4 + cast) + V * D * (4 + cast)
    return tokens * V * (8 + cast)


def buffer_bytes(cfg: ModelConfig, specs: list[ParamSpec], strategy: str, ac: str, micro_batch: int, seq: int,
                 chunk: int, e: int) -> dict[str, float]:
    """Non-activation, non-static memory at the peak (module docstring): weight copies, grad staging, logits."""
    L = cfg.n_layer
    block_w = block_matmul_params(cfg, specs)
    block_all = sum(s.numel for s in specs if ".layers.0." in s.name or ".h.0." in s.name)
    head = cfg.vocab_size * cfg.d_model
    out = {"weights_bf16": 0.0, "grad_staging": 0.0, "logits": logits_buffer_bytes(cfg, micro_batch * seq, chunk, e)}
    root = sum(s.numel for s in specs if s.kind in ("embed", "pos", "head") or s.name.endswith(("model.norm.weight",
                                                                                                     "ln_f.weight")))
    if strategy == "zero2":  # FSDP keeps the whole model gathered (bf16) through forward and backward
        out["weights_bf16"] = 2 * n_params(specs)
    elif strategy == "zero3":  # FSDP gathers one block at a time, prefetching the next, plus the root unit
        out["weights_bf16"] = 2 * (2 * block_all + root)
    elif e != 4:  # autocast's bf16 weight copies, saved for backward by each matmul
        c = n_checkpointed(L, ac)
        out["weights_bf16"] = e * ((L - c) * block_w + (block_w if c else 0) + head)
    if strategy in ("zero2", "zero3"):
        out["grad_staging"] = 4 * 2 * block_all
    return out


# ----------------------------------------------------------------------------- post-training stages
STAGES = ("pretrain", "sft", "dpo", "simpo", "reward", "grpo")


@dataclass(frozen=True)
class StageMemory:
    """What a post-training stage holds beyond the policy's training state (`banyan plan --stage`).

    reference  DPO / IPO, and GRPO with beta > 0: the frozen reference (banyan.train.reference), the
               --init weights built like the policy without an optimizer: its parameters only, in the
               policy's parameter dtype (fp32), sharded like the policy (zero2/zero3: / n); no grads,
               no optimizer state, no saved activations (it runs under no_grad).
    kv_cache   GRPO rollouts (banyan.model.generate): keys and values of every layer for
               group_size x prompts rows at `length` positions (prompt + completion), in the
               parameter dtype (the cache is made in the weights' dtype, fp32, even under autocast):
               2 * n_layer * rows * n_kv_head * head_dim * length * 4 B. Counted in full although
               generation ends before the training forward (the caching allocator keeps the blocks).
    """

    stage: str = "pretrain"
    group_size: int = 1
    prompts: int = 1
    length: int = 0
    beta: float = 0.0

    @property
    def has_reference(self) -> bool:
        return self.stage == "dpo" or (self.stage == "grpo" and self.beta > 0)


def reference_bytes(specs: list[ParamSpec], strategy: str, n: int, param_bytes: int = 4) -> float:
    """The frozen reference's weights per GPU: the base parameters (no LoRA adapters), sharded like the policy."""
    base = sum(s.numel for s in specs if s.kind != "lora")
    return param_bytes * base / (n if strategy in ("zero2", "zero3") else 1)


def kv_cache_bytes(cfg: ModelConfig, rows: int, length: int, cache_bytes: int = 4) -> float:
    """K and V of every layer for `rows` sequences of `length` positions (banyan.model.common.KVCache)."""
    cfg.finalize()
    return 2.0 * cfg.n_layer * rows * cfg.n_kv_head * cfg.head_dim * length * cache_bytes


def stage_bytes(stage: StageMemory, cfg: ModelConfig, specs: list[ParamSpec], strategy: str, n: int) -> dict:
    """{"reference": B, "kv_cache": B} per GPU for `stage` (zeros where the stage holds neither)."""
    if stage.stage not in STAGES:
        raise ValueError(f"unknown stage {stage.stage!r}; expected one of {STAGES}")
    ref = reference_bytes(specs, strategy, n) if stage.has_reference else 0.0
    kv = kv_cache_bytes(cfg, stage.group_size * stage.prompts, stage.length) if stage.stage == "grpo" else 0.0
    return {"reference": ref, "kv_cache": kv}
