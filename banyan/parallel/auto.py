"""`parallel.strategy auto`: pick the cheapest strategy whose per-rank memory fits, and say why.

Per-rank training memory, P parameters, W ranks, L ranks per node (fp32 master weights):

    ddp    4P weights + 4P grads + oP optimizer           + activations
    zero1  4P + 4P + oP/W                                  + activations   (ZeRO stage 1)
    zero2  4P weights gathered fwd->bwd + (4P + oP)/W      + activations
    zero3  (4P + 4P + oP)/W + two blocks gathered           + activations
    hsdp   like zero3 with L in place of W (sharded within a node only)

o is optimizer bytes per parameter and the activations are those of one micro-batch plus the
logits and their gradient, both taken from `banyan plan`'s memory model (banyan.plan.memory, whose
static bytes are tested against real tensors), so `auto` and `banyan plan` never disagree about
what a strategy needs. Estimates, not measurements; the log shows the numbers.

Communication per step is lowest for ddp/zero1 (one gradient all-reduce, 2P bytes on the wire
per rank), ~1.5x for zero2/zero3 (all-gather + reduce-scatter), so the order of preference is
ddp, zero1, zero2, zero3; across nodes hsdp keeps the all-gathers inside each node.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from banyan.config import RunConfig
from banyan.parallel.env import DistEnv
from banyan.plan import memory as M

HEADROOM = 0.85  # fraction of free memory a plan may use (allocator fragmentation, buffers, comm)
GB = 2**30


def free_memory_bytes(env: DistEnv) -> int:
    """Free memory available to this rank: the GPU's free bytes, or MemAvailable / local ranks on CPU."""
    if env.device.type == "cuda":
        return int(torch.cuda.mem_get_info(env.device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // max(1, env.local_world_size)
    except OSError:
        pass
    return 8 * GB // max(1, env.local_world_size)  # no /proc (macOS): assume a modest machine


def _compute_bytes(cfg: RunConfig) -> int:
    """Bytes per activation element: 2 under bf16/fp16 autocast, else 4."""
    t = cfg.train
    low = t.dtype in ("bf16", "fp16") or (t.dtype == "auto" and t.device != "cpu" and torch.cuda.is_available())
    return 2 if low else 4


def optimizer_bytes_per_param(cfg: RunConfig) -> float:
    """Optimizer-state bytes per parameter of this model under cfg.optim.name (the planner's exact count)."""
    specs = M.param_specs(cfg.model)
    return M.optimizer_state_bytes(specs, cfg.optim.name) / max(1, M.n_params(specs))


def activation_bytes(cfg: RunConfig) -> float:
    """Saved activations of one micro-batch + the transient logits and their gradient (planner model)."""
    t, e = cfg.train, _compute_bytes(cfg)
    saved = M.activation_bytes(cfg.model, t.micro_batch, t.seq_len, t.activation_checkpointing, t.chunked_loss, e)
    return saved["total"] + M.logits_buffer_bytes(cfg.model, t.micro_batch * t.seq_len, t.chunked_loss, e)


def memory_plan(n_params: int, block_params: int, cfg: RunConfig, env: DistEnv) -> dict[str, float]:
    """Estimated peak bytes per rank for each data-parallel strategy."""
    P, W, L = float(n_params), env.world_size, env.local_world_size
    o = optimizer_bytes_per_param(cfg)
    act = activation_bytes(cfg)
    return {
        "ddp": (8 + o) * P + act,
        "zero1": 8 * P + o * P / W + act,
        "zero2": 4 * P + (4 + o) * P / W + act,
        "zero3": (8 + o) * P / W + 2 * 4 * block_params + act,
        "hsdp": (8 + o) * P / L + 2 * 4 * block_params + act,
    }


def _min_over_ranks(value: int, env: DistEnv) -> int:
    """Every rank must pick the same strategy, so decide on the smallest free memory of any rank."""
    if not (env.distributed and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def choose_strategy(model: nn.Module, cfg: RunConfig, env: DistEnv) -> tuple[str, str]:
    """Resolve `auto` (or echo an explicit choice): returns (strategy, reason for the log)."""
    s = cfg.parallel.strategy
    if s != "auto":
        return s, "asked for"
    if env.world_size == 1:
        return "single", "one process"
    if cfg.optim.name == "muon":
        return "ddp", f"auto: {env.world_size} processes; muon orthogonalises whole matrices, so no sharding"
    n_params = sum(p.numel() for p in model.parameters())
    blocks = list(model.blocks()) if hasattr(model, "blocks") else []
    block_params = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=n_params)
    free = _min_over_ranks(free_memory_bytes(env), env)
    budget = HEADROOM * free
    need = memory_plan(n_params, block_params, cfg, env)
    gb = {k: f"{v / GB:.2f}" for k, v in need.items()}
    where = f"{env.world_size} ranks on {env.num_nodes} node(s)"
    head = (f"{n_params / 1e6:.1f}M params, {where}, {free / GB:.1f} GB free per rank "
            f"(using {HEADROOM:.0%}); est. GB/rank ddp {gb['ddp']}, zero1 {gb['zero1']}, zero2 {gb['zero2']}, "
            f"zero3 {gb['zero3']}")
    if need["ddp"] <= budget:
        return "ddp", f"auto: {head}; a full replica fits, and ddp has the least communication"
    if need["zero1"] <= budget:
        return "zero1", f"auto: {head}; a replica does not fit with its optimizer state, sharding that is enough"
    if env.num_nodes > 1 and need["hsdp"] <= budget:
        return "hsdp", (f"auto: {head}, hsdp {gb['hsdp']}; sharding within each node fits, so only a gradient "
                        f"all-reduce crosses the network (full sharding across nodes would be bound by it)")
    if need["zero2"] <= budget:
        return "zero2", f"auto: {head}; grads and optimizer state must be sharded, gathered weights still fit"
    tail = "" if need["zero3"] <= budget else (
        "; even zero3 may not fit: try train.activation_checkpointing full, a smaller train.micro_batch "
        "or parallel.cpu_offload")
    return "zero3", f"auto: {head}; only full sharding of weights, grads and optimizer state fits{tail}"
