"""Meta-device models made real: allocate storage on the device, then initialise, shard by shard.

The trainer builds every model on the meta device (no memory), lets `parallelize()` shard it, and
only then allocates: an FSDP (zero2/zero3/hsdp) rank allocates its own shard of each parameter and
never the full tensor (torchtitan's order: meta build -> fully_shard -> to_empty -> init).

The initial values must not depend on the sharding: a zero3 run on 4 ranks starts from exactly the
weights a one-process run starts from. `init_weights()` on full tensors draws N(0, std) values from
the global CPU generator, parameter after parameter (`CausalLM.init_plan()`). For a sharded
parameter `streamed_normal_` replays that same stream in pieces of `INIT_CHUNK` elements and keeps
only the piece that falls in this rank's rows, so memory stays at one piece, not one parameter.

Why the pieces are bit-identical to one big draw: torch's CPU `normal_` (aten/src/ATen/native/cpu/
DistributionTemplates.h, `normal_fill`) for a contiguous tensor of >= 16 elements first draws one
uniform per element, then applies Box-Muller to each block of 16, and, when the size is not a
multiple of 16, draws 16 more uniforms to redo the last 16 values. Pieces whose sizes are multiples
of 16 (the last one >= 16 elements) consume the generator exactly as the whole tensor does.
tests/parallel/test_materialize.py checks this bit for bit on odd shapes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from banyan.model.common import to_empty

INIT_CHUNK = 1 << 20  # elements per streamed piece (4 MiB of fp32); a multiple of 16


def _piece_bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    """[start, end) pieces of a flat stream of n values: multiples of 16, the last one >= 16 long."""
    chunk = max(16, chunk - chunk % 16)
    bounds, start = [], 0
    while start < n:
        end = min(n, start + chunk)
        if 0 < n - end < 16:  # a tail shorter than 16 would be drawn differently: fold it into this piece
            end = n
        bounds.append((start, end))
        start = end
    return bounds


def local_row_range(param: torch.Tensor) -> tuple[int, int]:
    """Rows [start, end) of dim 0 that this rank holds of a DTensor parameter (all rows for a plain tensor)."""
    if not hasattr(param, "device_mesh"):
        return 0, param.shape[0] if param.dim() else 1
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    if param.dim() == 0:
        return 0, 1
    return int(offset[0]), int(offset[0]) + int(shape[0])


@torch.no_grad()
def streamed_normal_(param: torch.Tensor, std: float, chunk: int = 0) -> None:
    """Fill this rank's shard of `param` (DTensor sharded on dim 0, or plain) with the values a full-size
    `torch.empty(param.shape).normal_(0, std)` on the global CPU generator would give it."""
    chunk = chunk or INIT_CHUNK
    local = param.to_local() if hasattr(param, "to_local") else param
    numel = param.numel()
    row = numel // param.shape[0] if param.dim() and param.shape[0] else numel
    r0, r1 = local_row_range(param)
    want0, want1 = r0 * row, r1 * row  # this shard's span of the flat stream
    flat = local.view(-1)
    for start, end in _piece_bounds(numel, chunk):
        piece = torch.empty(end - start, dtype=torch.float32).normal_(0.0, std)  # always draws: keeps the stream
        lo, hi = max(start, want0), min(end, want1)
        if lo < hi:
            flat[lo - want0:hi - want0].copy_(piece[lo - start:hi - start])


@torch.no_grad()
def full_uniform_(param: torch.Tensor, bound: float) -> None:
    """This rank's rows of a full-size U(-bound, bound) draw on the global CPU generator. Only LoRA A
    matrices ([r, in], small) use it, so the whole tensor is drawn at once and the local rows kept."""
    full = torch.empty(param.shape, dtype=torch.float32).uniform_(-bound, bound)
    local = param.to_local() if hasattr(param, "to_local") else param
    r0, r1 = local_row_range(param)
    local.copy_(full[r0:r1].to(local.dtype).view(local.shape))


@torch.no_grad()
def init_sharded(model: nn.Module, chunk: int = 0, only=None) -> None:
    """`model.init_weights()` for a model whose parameters may be DTensor shards: same values, shard memory.
    `only(name) -> bool` restricts it to some parameters (LoRA adapters after the base was loaded)."""
    for name, param, kind, std in model.init_plan():
        if only is not None and not only(name):
            continue
        if kind == "normal":
            streamed_normal_(param, std, chunk)
        elif kind == "uniform":
            full_uniform_(param, std)
        elif kind == "zeros":
            param.zero_()
        elif kind == "ones":
            param.fill_(1.0)
        else:  # a new kind in init_plan must be taught here
            raise ValueError(f"init_sharded: unknown init kind {kind!r}")


def is_sharded(model: nn.Module) -> bool:
    return any(hasattr(p, "device_mesh") for p in model.parameters())


def materialize(model: nn.Module, device: torch.device, init: bool = True, chunk: int = 0) -> None:
    """Meta model -> storage on `device`, then the deterministic init (skipped when `init` is False because
    weights get loaded next). A model that already has storage is only moved to `device`."""
    if not any(p.is_meta for p in model.parameters()):
        model.to(device)
        return
    to_empty(model, device)
    if not init:
        return
    if is_sharded(model) or device.type != "cpu":
        # drawn on the CPU generator piecewise: the same values on every device and every sharding
        init_sharded(model, chunk)
    else:
        model.init_weights()
