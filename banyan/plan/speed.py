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

On a CPU (an eager host: Throughput.dispatch_s > 0, from `plan --calibrate`) ops run one by one in the
Python thread, so the model adds what a GPU hides or fuses: each aten call's host cost (EAGER_OPS, counted
with torch.profiler), elementwise bytes counted op by op (eager_elementwise_bytes_per_token) at the
measured out-of-place bandwidth, the SDPA kernel's own measured rate, page faults of >= 32 MiB outputs and
GELU's arithmetic (host_extra_seconds), and the X W^T / dY^T X GEMM layouts' measured rates.

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
# Eager aten calls of one training step (top-level, views included; torch.profiler on torch 2.13, fp32, no
# recompute, unchunked loss): ((per block forward, backward), (rest: embedding, final norm, head, loss)).
EAGER_OPS = {"llama": ((56, 128), (28, 32)), "gpt2": ((23, 67), (13, 22))}
MMAP_THRESHOLD = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: larger blocks are fresh mmaps
OPT_DISPATCH_OPS = {"adamw": 2}  # fused AdamW: one _fused_adamw_ call over all tensors (+ the step counter)


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
    attn_tflops: float = 0.0
    """Measured causal SDPA forward+backward TFLOP/s at long sequences (0: the GEMM rate, as flash kernels on
    GPUs reach; CPU's SDPA kernel runs several times below its GEMM rate, so `plan --calibrate` times it)."""
    attn_d0: float = 0.0
    """Half-efficiency dimension of the SDPA curve f(T)^2 f(head_dim) (used with attn_tflops)."""
    elem_bw_gbs: float = 0.0
    """Bandwidth of eager out-of-place elementwise ops (fresh output each call; 0: mem_bw_gbs)."""
    dispatch_s: float = 0.0
    """Host seconds per eager aten call, paid in series with the compute (CPU runs each op synchronously;
    0 on GPUs, where dispatch overlaps the asynchronous kernels and `launch_s` counts kernels instead).
    Non-zero marks an eager host device: elementwise bytes are counted op by op (eager_elementwise_bytes_per_token)."""
    nt_rate: float = 1.0
    """Rate of Y = X W^T (the forward's layout, W stored [out, in]) / the calibrated X W rate, same shapes."""
    tn_rate: float = 1.0
    """Rate of dW = dY^T X (the weight gradient's layout) / the calibrated X W rate (dX = dY W is X W's layout)."""
    page_fault_s: float = 0.0
    """Extra seconds per byte written into a fresh (>= 32 MiB, mmap-backed) CPU allocation."""
    gelu_s: float = 0.0
    """Seconds per value of an exact (erf) GELU forward + backward on the host (compute-bound on CPUs)."""
    gelu_tanh_s: float = 0.0
    """The same for the tanh-approximate GELU (model.activation gelu_tanh)."""


def dim_efficiency(d: float, d0: float) -> float:
    return d / (d + d0)


def matmul_seconds(m: int, n: int, k: int, tp: Throughput, e: int = 2) -> float:
    """Time of one [m, k] x [k, n] GEMM in dtype of e bytes (module docstring's roofline)."""
    eff = dim_efficiency(m, tp.d0) * dim_efficiency(n, tp.d0) * dim_efficiency(k, tp.d0)
    compute = 2.0 * m * n * k / (tp.matmul_tflops * 1e12 * eff)
    memory = e * (m * k + k * n + m * n) / (tp.mem_bw_gbs * 1e9)
    return max(compute, memory)


def weight_matmul_seconds(tokens: int, n_out: int, n_in: int, tp: Throughput, e: int) -> tuple[float, float]:
    """(forward, backward) time of one weight [n_out, n_in] applied to `tokens` rows, each GEMM at its layout's
    calibrated rate (tp.nt_rate, tp.tn_rate)."""
    fwd = matmul_seconds(tokens, n_out, n_in, tp, e) / tp.nt_rate
    bwd = matmul_seconds(tokens, n_in, n_out, tp, e) + matmul_seconds(n_out, n_in, tokens, tp, e) / tp.tn_rate
    return fwd, bwd


def attention_flops(n_head: int, micro_batch: int, seq: int, head_dim: int) -> float:
    """Forward FLOPs of causal attention: QK^T and PV, 4 T^2 hd per head per sequence, halved by the mask."""
    return micro_batch * n_head * 4.0 * seq * seq * head_dim / 2


def attention_seconds(cfg: ModelConfig, micro_batch: int, seq: int, tp: Throughput, e: int) -> tuple[float, float]:
    """(forward, backward) time of one layer's causal flash attention over micro_batch x seq tokens.

    With a measured SDPA rate (attn_tflops, attn_d0) the forward + backward FLOPs run at
    attn_tflops f(T)^2 f(hd) and split 1 : ATTN_BWD_FACTOR; otherwise at the GEMM curve."""
    hd = cfg.head_dim
    fwd_flops = attention_flops(cfg.n_head, micro_batch, seq, hd)
    rate, d0 = (tp.attn_tflops, tp.attn_d0) if tp.attn_tflops > 0 else (tp.matmul_tflops, tp.d0)
    eff = dim_efficiency(seq, d0) ** 2 * dim_efficiency(hd, d0)
    fwd = fwd_flops / (rate * 1e12 * eff)
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


def eager_elementwise_bytes_per_token(cfg: ModelConfig) -> tuple[float, float]:
    """(forward, backward) bytes per token per block of the elementwise ops as eager fp32 runs them, op by op.

    Each unfused aten op reads its inputs and writes its output (4 B per value). Llama, w = q width D or
    dkv: RMSNorm pow 8D, mean 4D, x*r 8D, weight* 8D (28D, x2); rotary x*cos 8w, neg 4w, cat 8w, *sin 8w,
    add 12w (40w on q and k); attention output transpose-copy 8D; SwiGLU silu 8F, * 12F; 2 adds 24D.
    Backward: RMSNorm 84D (grads of both mul inputs + weight reduction, mean expand, pow 2x*g, the sum of
    x's two grads), rotary 60w (two muls, neg, two slice grads, three grads summed), SwiGLU 36F (two
    muls, silu_backward), output copy 8D, grad sums where a tensor feeds several ops (residual 2 x 12D,
    q/k/v input 2 x 12D, gate/up input 12D: 60D). GPT-2: LayerNorm 8D (x2), GELU 8F, copy 8D, adds 24D;
    backward LayerNorm 20D (x2), gelu_backward 12F, copy 8D, residual grad sums 24D, c_attn split 24D.
    """
    D, F = cfg.d_model, cfg.d_ff
    if cfg.arch == "llama":
        dq, dkv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        return 2 * 28 * D + 40 * (dq + dkv) + 8 * dq + 20 * F + 24 * D, \
            2 * 84 * D + 60 * (dq + dkv) + 36 * F + 8 * dq + 60 * D
    return 2 * 8 * D + 8 * F + 8 * D + 24 * D, 2 * 20 * D + 12 * F + 8 * D + 24 * D + 24 * D


def host_extra_seconds(cfg: ModelConfig, tokens: int, tp: Throughput) -> tuple[float, float]:
    """(forward, backward) CPU costs beyond bytes and FLOPs: page faults and GELU's arithmetic.

    glibc serves allocations of >= 32 MiB (its largest mmap threshold) with fresh pages from mmap, so
    every write into such an output faults its pages in (tp.page_fault_s per byte). Counted for the
    [tokens, V] fp32 loss tensors (logits, log-softmax; their grads) and the [tokens, F] MLP tensors
    (llama: gate, up, silu, product forward, their 4 grads backward; gpt2: fc out, GELU; 2 grads).
    GELU's arithmetic (erf or tanh: ~2 + 3 or ~4 + 4 ns per value forward + backward on one core) is above
    its memory time (8 B forward + 12 B backward per value): the excess, half forward half backward.
    Only when the device is eager (tp.dispatch_s > 0).
    """
    if tp.dispatch_s <= 0:
        return 0.0, 0.0
    logits, mlp = 4 * tokens * cfg.vocab_size, 4 * tokens * cfg.d_ff
    n_mlp = 4 if cfg.arch == "llama" else 2
    fault = lambda nbytes, n: n * nbytes * tp.page_fault_s if nbytes >= MMAP_THRESHOLD else 0.0  # noqa: E731
    fwd, bwd = fault(logits, 2) + cfg.n_layer * fault(mlp, n_mlp), fault(logits, 2) + cfg.n_layer * fault(mlp, n_mlp)
    if cfg.arch == "gpt2":
        per_value = tp.gelu_tanh_s if cfg.activation == "gelu_tanh" else tp.gelu_s
        gelu = cfg.n_layer * tokens * cfg.d_ff * max(0.0, per_value - 20 / ((tp.elem_bw_gbs or tp.mem_bw_gbs) * 1e9))
        fwd, bwd = fwd + gelu / 2, bwd + gelu / 2
    return fwd, bwd


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


def dispatch_seconds(cfg: ModelConfig, tp: Throughput, recomputed: int) -> tuple[float, float]:
    """(forward, backward) host dispatch time of the eager aten calls (EAGER_OPS) x tp.dispatch_s."""
    (blk_f, blk_b), (out_f, out_b) = EAGER_OPS[cfg.arch]
    fwd = (cfg.n_layer * blk_f + out_f) * tp.dispatch_s
    return fwd, (cfg.n_layer * blk_b + recomputed * blk_f + out_b) * tp.dispatch_s


def micro_batch_seconds(cfg: ModelConfig, specs: list[ParamSpec], micro_batch: int, seq: int, ac: str,
                        chunk: int, tp: Throughput, e: int = 2) -> StepTimes:
    """Forward + backward (with recompute) of one micro-batch, by operation (module docstring)."""
    t = micro_batch * seq
    bw = (tp.elem_bw_gbs or tp.mem_bw_gbs) * 1e9  # the elementwise ops' rate (fresh outputs, eager)
    blk_f = blk_b = 0.0
    block0 = [s for s in specs if s.kind in ("matrix", "lora") and (".layers.0." in s.name or ".h.0." in s.name)]
    for s in block0:  # every block has block 0's shapes
        f, b = weight_matmul_seconds(t, s.shape[0], s.shape[1], tp, e)
        blk_f, blk_b = blk_f + f, blk_b + (b if not s.frozen else b / 2)  # frozen: dX only, no dW
    att_f, att_b = attention_seconds(cfg, micro_batch, seq, tp, e)
    el_bytes, kernels = elementwise_bytes_per_token(cfg, e)
    kernels += 1 + len(block0)  # + the attention kernel and one per matmul
    el_f, el_b = t * el_bytes / bw, BWD_BYTES_FACTOR * t * el_bytes / bw
    if tp.dispatch_s > 0:  # eager host: each unfused op moves its own bytes
        el_f, el_b = (t * x / bw for x in eager_elementwise_bytes_per_token(cfg))
    block_f = blk_f + att_f + el_f + kernels * tp.launch_s
    block_b = blk_b + att_b + el_b + 2 * kernels * tp.launch_s
    V, D = cfg.vocab_size, cfg.d_model
    head_f, head_b = weight_matmul_seconds(t, V, D, tp, e)
    loss_s = t * loss_bytes_per_token(cfg, e) / bw
    cast_s = (6 * n_params(specs) / (tp.mem_bw_gbs * 1e9)) if e == 2 else 0.0  # autocast: fp32 weight -> bf16 copy
    L, c = cfg.n_layer, n_checkpointed(cfg.n_layer, ac)
    disp_f, disp_b = dispatch_seconds(cfg, tp, c)
    host_f, host_b = host_extra_seconds(cfg, t, tp)
    fwd = L * block_f + head_f + loss_s + cast_s + disp_f + host_f
    bwd = L * block_b + c * block_f + head_b + (head_f if chunk else 0.0) + BWD_BYTES_FACTOR * loss_s + disp_b + host_b
    matmul = L * (blk_f + blk_b) + c * blk_f + head_f + head_b + (head_f if chunk else 0.0)
    launch = (L + c) * kernels * tp.launch_s + L * 2 * kernels * tp.launch_s + disp_f + disp_b
    return StepTimes(matmul, (L + c) * att_f + L * att_b,
                     (L + c) * el_f + L * el_b + 3 * loss_s + cast_s + host_f + host_b, launch, fwd, bwd)


def flops_per_token(cfg: ModelConfig, specs: list[ParamSpec], seq: int) -> float:
    """Useful training FLOPs per token (same formula as CausalLM.flops_per_token)."""
    return 6.0 * matmul_params(cfg, specs) + 12.0 * cfg.n_layer * cfg.d_model * seq


def recompute_flops_per_token(cfg: ModelConfig, specs: list[ParamSpec], seq: int, ac: str, chunk: int) -> float:
    """Extra FLOPs per token from activation checkpointing and the chunked loss."""
    c = n_checkpointed(cfg.n_layer, ac)
    per_block_fwd = 2.0 * block_matmul_params(cfg, specs) + 4.0 * cfg.d_model * seq
    return c * per_block_fwd + (2.0 * cfg.vocab_size * cfg.d_model if chunk else 0.0)


def optimizer_seconds(cfg: ModelConfig, specs: list[ParamSpec], optim: str, shard: int, mem_bw_gbs: float,
                      peak_flops: float, mfu: float = 1.0, dispatch_s: float = 0.0) -> float:
    """Time of one optimizer step (+ grad-norm read) on one GPU holding 1/shard of the state (trainable
    parameters only: a LoRA base has no optimizer step); dispatch_s: host cost per eager call (CPU)."""
    specs = [s for s in specs if not s.frozen]
    mem = (OPT_BYTES[optim] + 4) * n_params(specs) / shard / (mem_bw_gbs * 1e9) \
        + OPT_DISPATCH_OPS.get(optim, 0) * dispatch_s
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
