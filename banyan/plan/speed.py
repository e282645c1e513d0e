"""The planner's time model: compute at an assumed MFU, optimizer step, exposed communication.

Compute. Useful FLOPs per token are `CausalLM.flops_per_token`: 6*N_matmul + 12*n_layer*D*T
(PaLM appendix B convention). Recompute is extra time at the same rate: full activation
checkpointing re-runs each block's forward (2*N_block + 4*D*T per layer per token), `selective`
half of the blocks, and the chunked loss recomputes the head's logits in backward (2*V*D). Time =
FLOPs / (peak * mfu); `mfu` is what the kernels achieve on useful + recomputed work.

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
  In both FSDP cases the first block's gather has nothing to hide behind.
zero2/zero3 assume FSDP mixed precision (`parallel.mixed_precision = true`: bf16 gathers).
"""

from __future__ import annotations

from dataclasses import dataclass

from banyan.model.config import ModelConfig
from banyan.plan.memory import ParamSpec, block_matmul_params, matmul_params, n_checkpointed, n_params

LINK_EFFICIENCY = 0.8  # NCCL bus bandwidth / link line rate, typical for PCIe and NVLink rings
NS_STEPS = 5
OPT_BYTES = {"adamw": 28, "adamw8bit": 16, "adamw8bit-torchao": 16, "muon": 20}


def flops_per_token(cfg: ModelConfig, specs: list[ParamSpec], seq: int) -> float:
    """Useful training FLOPs per token (same formula as CausalLM.flops_per_token)."""
    return 6.0 * matmul_params(cfg, specs) + 12.0 * cfg.n_layer * cfg.d_model * seq


def recompute_flops_per_token(cfg: ModelConfig, specs: list[ParamSpec], seq: int, ac: str, chunk: int) -> float:
    """Extra FLOPs per token from activation checkpointing and the chunked loss."""
    c = n_checkpointed(cfg.n_layer, ac)
    per_block_fwd = 2.0 * block_matmul_params(cfg, specs) + 4.0 * cfg.d_model * seq
    return c * per_block_fwd + (2.0 * cfg.vocab_size * cfg.d_model if chunk else 0.0)


def optimizer_seconds(cfg: ModelConfig, specs: list[ParamSpec], optim: str, shard: int, mem_bw_gbs: float,
                      peak_flops: float, mfu: float) -> float:
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
                 reduce_bytes: int = 4) -> Comm:
    """Communication per optimizer step for `strategy` on n ranks (module docstring).

    fwd_s/bwd_s: compute time of one micro-batch's forward/backward (backward includes recompute).
    reduce_bytes: bytes per gradient value in the reduction (4 fp32, 2 bf16).
    """
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
