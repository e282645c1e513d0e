"""The planner's time model: each operation of a training step, timed from its shape.

Matmuls (`matmul_seconds`). A GEMM [m, k] x [k, n] does 2mnk FLOPs and moves e(mk + kn + mn)
bytes. Its time is a roofline with an efficiency curve:
    t = max(2mnk / (R * f(m) f(n) f(k)),  e(mk + kn + mn) / BW),   f(d) = d / (d + d0)
R is the device's *achievable* large-GEMM rate (cuBLAS reaches ~75-80% of the datasheet peak on
Hopper, e.g. ~790 of 989 TFLOP/s on an H200), d0 the "half-efficiency dimension": a dim of d0
runs at half rate because the kernel's tiles (128x128 on tensor cores) are mostly padding and too
few tiles fill the SMs. Small micro-batches (small m) and narrow layers (small n, k) lose rate this
way. `banyan plan --calibrate` fits R and d0 to matmuls timed on the local device (calibrate.py).
Training runs each weight's matmul three times: forward Y = XW^T (m = tokens, n = out, k = in),
dX = dY W (n = in, k = out) and dW = dY^T X (m = out, n = in, k = tokens).

Attention (flash/efficient SDPA kernels) is timed from the kernel's FLOPs: forward QK^T and PV
are 4 * T * T * head_dim per head per sequence, halved by the causal mask; backward is 2.5x
forward (it recomputes QK^T: 5 matmuls instead of 2; FlashAttention-2, Dao 2023, sec. 3.1), at
the GEMM efficiency of the [T, T, head_dim] shapes the kernel tiles.

Norms, activations, rotary, residual adds, softmax/cross-entropy and the autocast weight casts are
memory-bound: bytes each moves (`elementwise_bytes_per_token`) / achievable memory bandwidth;
backward moves about twice what forward does. Each kernel launch also costs `launch_s` (eager
PyTorch launches ~20-25 kernels per block forward, twice that backward, each paid in full when small).

Optimizer step: memory-bound, bytes touched per (local) parameter / memory bandwidth: AdamW reads
p, g, m, v and writes p, m, v (28 B fp32), 8-bit AdamW 16 B, Muon 20 B plus its Newton-Schulz
matmuls (5 x (4*m^2*n + 2*m^3) FLOPs for an m x n matrix, m <= n), plus 4 B to read grads for clipping.

Communication (ring algorithms, Patarasuk & Yuan 2009; NCCL's bus-bandwidth model): all-reduce
moves 2(n-1)/n * bytes per rank, reduce-scatter and all-gather (n-1)/n * bytes, at the slowest
link's bandwidth: intra-node link x `LINK_EFFICIENCY` (x `P2P_OFF_FACTOR` without PCIe P2P), or
the network across nodes (a flat ring is bottlenecked by the NIC). Bandwidth term only; at the
tens-of-MB message sizes here latency is negligible. Overlap (what is *exposed*):
  * ddp    one all-reduce of fp32 grads per step (no_sync on the other micro-batches), overlapped
           with the last micro-batch's backward; the last bucket (bucket_mb) is always exposed.
  * zero1  the same all-reduce, then ZeroRedundancyOptimizer broadcasts each rank's updated fp32
           params: (n-1)/n * 4 B per param after the optimizer step, not overlapped.
  * zero2  FSDP2: all-gather the bf16 params once per micro-batch (prefetched behind forward),
           reduce-scatter the grads once per step (the trainer accumulates unsharded grads on the
           other micro-batches), overlapped with the last backward.
  * zero3  FSDP2: all-gather bf16 params for forward and again for backward of every micro-batch,
           reduce-scatter once per step; prefetching overlaps them with compute.
  * hsdp   zero3 within a node (intra-node bandwidth) plus an all-reduce of each rank's 1/per_node
           grad shard across nodes (network bandwidth), overlapped with the last backward.
  In the FSDP cases the first block's gather has nothing to hide behind.
zero2/zero3/hsdp assume FSDP mixed precision (`parallel.mixed_precision = true`: bf16 gathers).
"""

from __future__ import annotations

from dataclasses import dataclass

from banyan.model.config import ModelConfig
from banyan.plan.memory import ParamSpec, block_matmul_params, matmul_params, n_checkpointed, n_params

LINK_EFFICIENCY = 0.8  # NCCL bus bandwidth / link line rate, typical for PCIe and NVLink rings
NS_STEPS = 5
OPT_BYTES = {"adamw": 28, "adamw8bit": 16, "adamw8bit-torchao": 16, "muon": 20}
ATTN_BWD_FACTOR = 2.5  # flash backward FLOPs / forward FLOPs (5 matmuls vs 2)
BWD_BYTES_FACTOR = 2.0  # an elementwise backward reads the saved input and dY, writes dX (~2x forward)


@dataclass(frozen=True)
class Throughput:
    """What one device achieves: large-GEMM rate, half-efficiency dim, memory bandwidth, launch cost."""

    matmul_tflops: float
    """Achievable dense matmul TFLOP/s at large shapes (compute dtype)."""
    d0: float
    """Half-efficiency dimension of the GEMM efficiency curve f(d) = d / (d + d0)."""
    mem_bw_gbs: float
    """Achievable memory bandwidth, GB/s (a large copy)."""
    launch_s: float = 5e-6
    """Fixed cost per kernel launch, seconds."""
    source: str = "preset"
    """Where the figures came from: 'preset' or the calibration file."""


def dim_efficiency(d: float, d0: float) -> float:
    return d / (d + d0)


def matmul_seconds(m: int, n: int, k: int, tp: Throughput, e: int = 2) -> float:
    """Time of one [m, k] x [k, n] GEMM in dtype of e bytes (module docstring's roofline)."""
    eff = dim_efficiency(m, tp.d0) * dim_efficiency(n, tp.d0) * dim_efficiency(k, tp.d0)
    compute = 2.0 * m * n * k / (tp.matmul_tflops * 1e12 * eff)
    memory = e * (m * k + k * n + m * n) / (tp.mem_bw_gbs * 1e9)
    return max(compute, memory)


def weight_matmul_seconds(tokens: int, n_out: int, n_in: int, tp: Throughput, e: int) -> tuple[float, float]:
    """(forward, backward) time of one weight [n_out, n_in] applied to `tokens` rows."""
    fwd = matmul_seconds(tokens, n_out, n_in, tp, e)
    bwd = matmul_seconds(tokens, n_in, n_out, tp, e) + matmul_seconds(n_out, n_in, tokens, tp, e)
    return fwd, bwd


def attention_seconds(cfg: ModelConfig, micro_batch: int, seq: int, tp: Throughput, e: int) -> tuple[float, float]:
    """(forward, backward) time of one layer's causal flash attention over micro_batch x seq tokens."""
    hd = cfg.head_dim
    fwd_flops = micro_batch * cfg.n_head * 4.0 * seq * seq * hd / 2  # causal: half the score matrix
    eff = dim_efficiency(seq, tp.d0) ** 2 * dim_efficiency(hd, tp.d0)
    fwd = fwd_flops / (tp.matmul_tflops * 1e12 * eff)
    return fwd, ATTN_BWD_FACTOR * fwd


def elementwise_bytes_per_token(cfg: ModelConfig, e: int) -> tuple[float, int]:
    """(forward bytes per token per block, elementwise kernels per block) of the memory-bound ops.

    Llama block: 2 RMSNorms (read fp32 residual D, write e*D: (4+e)D each, plus the fp32 upcast
    inside: 8D), rotary on q and k (read+write (D + dkv)e, cos/sin reads), SwiGLU (read 2F, write
    F), 2 residual adds (read 2 x 4D, write 4D). GPT-2: 2 LayerNorms, GELU (read F, write F), 2 adds.
    """
    D, F = cfg.d_model, cfg.d_ff
    adds = 2 * 12 * D
    if cfg.arch == "llama":
        dkv = cfg.n_kv_head * cfg.head_dim
        norms = 2 * ((4 + e) * D + 8 * D)
        rope = 2 * e * (D + dkv) + 2 * e * cfg.head_dim
        return norms + rope + 3 * e * F + adds, 14
    return 2 * ((4 + e) * D + 8 * D) + 2 * e * F + adds, 10


def loss_bytes_per_token(cfg: ModelConfig, e: int) -> float:
    """Cross-entropy over the logits: forward upcast (read e V, write 4V), log-softmax (read 4V twice)."""
    V = cfg.vocab_size
    return (e + 4) * V + 8 * V


@dataclass
class StepTimes:
    """Seconds of one micro-batch by operation class, and its forward/backward split."""

    matmul: float
    attention: float
    memory: float
    launch: float
    fwd: float
    bwd: float

    @property
    def total(self) -> float:
        return self.fwd + self.bwd


def micro_batch_seconds(cfg: ModelConfig, specs: list[ParamSpec], micro_batch: int, seq: int, ac: str,
                        chunk: int, tp: Throughput, e: int = 2) -> StepTimes:
    """Forward + backward (with recompute) of one micro-batch, by operation (module docstring)."""
    t = micro_batch * seq
    bw = tp.mem_bw_gbs * 1e9
    blk_f = blk_b = 0.0
    block0 = [s for s in specs if s.kind in ("matrix", "lora") and (".layers.0." in s.name or ".h.0." in s.name)]
    for s in block0:  # every block has block 0's shapes
        f, b = weight_matmul_seconds(t, s.shape[0], s.shape[1], tp, e)
        blk_f, blk_b = blk_f + f, blk_b + (b if not s.frozen else b / 2)  # frozen: dX only, no dW
    att_f, att_b = attention_seconds(cfg, micro_batch, seq, tp, e)
    el_bytes, kernels = elementwise_bytes_per_token(cfg, e)
    kernels += 1 + len(block0)  # + the attention kernel and one per matmul
    el_f = t * el_bytes / bw
    block_f = blk_f + att_f + el_f + kernels * tp.launch_s
    block_b = blk_b + att_b + BWD_BYTES_FACTOR * el_f + 2 * kernels * tp.launch_s
    V, D = cfg.vocab_size, cfg.d_model
    head_f, head_b = weight_matmul_seconds(t, V, D, tp, e)
    loss_s = t * loss_bytes_per_token(cfg, e) / bw
    cast_s = (6 * n_params(specs) / bw) if e == 2 else 0.0  # autocast: read fp32 weight, write bf16 copy
    L, c = cfg.n_layer, n_checkpointed(cfg.n_layer, ac)
    fwd = L * block_f + head_f + loss_s + cast_s
    bwd = L * block_b + c * block_f + head_b + (head_f if chunk else 0.0) + BWD_BYTES_FACTOR * loss_s
    matmul = L * (blk_f + blk_b) + c * blk_f + head_f + head_b + (head_f if chunk else 0.0)
    return StepTimes(matmul, (L + c) * att_f + L * att_b, (L * 3 + c) * el_f + 3 * loss_s + cast_s,
                     (L + c) * kernels * tp.launch_s + L * 2 * kernels * tp.launch_s, fwd, bwd)


def flops_per_token(cfg: ModelConfig, specs: list[ParamSpec], seq: int) -> float:
    """Useful training FLOPs per token (same formula as CausalLM.flops_per_token)."""
    return 6.0 * matmul_params(cfg, specs) + 12.0 * cfg.n_layer * cfg.d_model * seq


def recompute_flops_per_token(cfg: ModelConfig, specs: list[ParamSpec], seq: int, ac: str, chunk: int) -> float:
    """Extra FLOPs per token from activation checkpointing and the chunked loss."""
    c = n_checkpointed(cfg.n_layer, ac)
    per_block_fwd = 2.0 * block_matmul_params(cfg, specs) + 4.0 * cfg.d_model * seq
    return c * per_block_fwd + (2.0 * cfg.vocab_size * cfg.d_model if chunk else 0.0)


def optimizer_seconds(cfg: ModelConfig, specs: list[ParamSpec], optim: str, shard: int, mem_bw_gbs: float,
                      peak_flops: float, mfu: float = 1.0) -> float:
    """Time of one optimizer step (+ grad-norm read) on one GPU holding 1/shard of the state (trainable
    parameters only: a LoRA base has no optimizer step)."""
    specs = [s for s in specs if not s.frozen]
    mem = (OPT_BYTES[optim] + 4) * n_params(specs) / shard / (mem_bw_gbs * 1e9)
    if optim != "muon":
        return mem
    ns = 0.0
    for s in specs:
        if s.kind in ("matrix", "lora"):
            m, n = sorted(s.shape)
            ns += NS_STEPS * (4.0 * m * m * n + 2.0 * m**3)
    return mem + ns / (peak_flops * mfu)


@dataclass
class Comm:
    """Per-step communication: total seconds on the wire and seconds not hidden behind compute."""

    total_s: float
    exposed_s: float


def comm_seconds(strategy: str, n: int, n_param: int, block_params: int, n_layer: int, accum: int,
                 fwd_s: float, bwd_s: float, bw_gbs: float, bucket_mb: float = 25.0,
                 reduce_bytes: int = 4, per_node: int = 0, net_gbs: float = 0.0) -> Comm:
    """Communication per optimizer step for `strategy` on n ranks (module docstring).

    fwd_s/bwd_s: compute time of one micro-batch's forward/backward (backward includes recompute).
    reduce_bytes: bytes per gradient value in the reduction (4 fp32, 2 bf16).
    hsdp: per_node ranks share a node (bw_gbs inside it), net_gbs between nodes.
    """
    if strategy == "hsdp":
        return _hsdp_seconds(n, per_node, n_param, block_params, accum, fwd_s, bwd_s, bw_gbs, net_gbs, reduce_bytes)
    if n <= 1 or strategy == "single":
        return Comm(0.0, 0.0)
    bw = bw_gbs * 1e9
    ring = (n - 1) / n
    grads = n_param * reduce_bytes
    bucket = min(bucket_mb * 2**20, grads)
    if strategy == "ddp":
        t = 2 * ring * grads / bw
        return Comm(t, max(0.0, t - bwd_s) + 2 * ring * bucket / bw)
    if strategy == "zero1":
        ar, bcast = 2 * ring * grads / bw, ring * 4 * n_param / bw
        return Comm(ar + bcast, max(0.0, ar - bwd_s) + 2 * ring * bucket / bw + bcast)
    ag, rs = ring * 2 * n_param / bw, ring * grads / bw
    first = ring * 2 * block_params / bw
    if strategy == "zero2":
        exposed = accum * (max(0.0, ag - fwd_s) + first) + max(0.0, rs - bwd_s)
        return Comm(accum * ag + rs, exposed)
    if strategy == "zero3":
        exposed = accum * (max(0.0, ag - fwd_s) + first) + (accum - 1) * max(0.0, ag - bwd_s) \
            + max(0.0, ag + rs - bwd_s)
        return Comm(accum * 2 * ag + rs, exposed)
    raise ValueError(f"unknown strategy {strategy!r}")


def _hsdp_seconds(n: int, per_node: int, n_param: int, block_params: int, accum: int, fwd_s: float, bwd_s: float,
                  bw_gbs: float, net_gbs: float, reduce_bytes: int) -> Comm:
    """hsdp: zero3 inside each node, then an all-reduce of the 1/per_node grad shard across n/per_node nodes."""
    if per_node < 1 or n % per_node or net_gbs <= 0:
        raise ValueError(f"hsdp needs per_node dividing n and a network bandwidth (n={n}, per_node={per_node})")
    inner = comm_seconds("zero3", per_node, n_param, block_params, 0, accum, fwd_s, bwd_s, bw_gbs,
                         reduce_bytes=reduce_bytes)
    nodes = n // per_node
    cross = 2 * (nodes - 1) / nodes * reduce_bytes * n_param / per_node / (net_gbs * 1e9)
    return Comm(inner.total_s + cross, inner.exposed_s + max(0.0, cross - bwd_s))
