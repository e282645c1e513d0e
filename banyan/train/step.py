"""The one train step every stage shares: token-weighted gradient accumulation over micro-batches and ranks.

    counts  = [task.count(b) for b in micro_batches]          # known before any forward
    N       = all_reduce_sum(sum(counts))                      # items trained this step, all ranks
    for each micro-batch b (no_sync on all but the last, autocast):
        loss_sum, n, metrics = task.loss(model, b)
        (loss_sum * world / N).backward()                      # DDP/FSDP average over ranks: * world
    loss = all_reduce_sum(sum of loss_sum) / N                 # the mean over every trained item
    if loss and grad norm are finite (and some rank's task says the step carries a learning signal):
        clip, optimizer.step()                                  else: skip the update
    optimizer.zero_grad()

Dividing each micro-batch's mean by the number of micro-batches (what most loops do) weighs a
micro-batch with 3 trained tokens like one with 300; here every trained token (or pair, or
rollout) weighs the same whatever the padding, accumulation and world size, so the gradient
equals one process's on the concatenated batch (tests/parallel: 2 ranks, uneven masks).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn as nn

from banyan.train.task import Batch

LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]
CountFn = Callable[[Batch], torch.Tensor]


@dataclass
class StepResult:
    loss: float        # loss per counted item over the whole step (all micro-batches and ranks)
    grad_norm: float   # global L2 norm before clipping (nan when skipped)
    finite: bool       # False when the loss or the gradient was nan/inf and the update was skipped
    count: int = 0     # items (e.g. trained tokens) in the step, all ranks
    metrics: dict[str, float] = field(default_factory=dict)  # each metric sum / count
    updated: bool = True  # False when the optimizer did not step (non-finite, empty, or no rank had a signal)


def resolve_dtype(device: torch.device, dtype: str) -> str:
    """`auto` -> bf16 where bf16 pays (CUDA, CPUs with AMX: banyan.hardware.native_bf16), else fp32."""
    if dtype != "auto":
        return dtype
    from banyan.hardware import native_bf16

    return "bf16" if native_bf16(device) else "fp32"


def autocast_for(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast where asked (auto: bf16 where it is native, see resolve_dtype)."""
    dtype = resolve_dtype(device, dtype)
    if dtype == "fp32":
        return contextlib.nullcontext()
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=torch_dtype)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a no-op in one process); returns a new tensor."""
    t = t.detach().clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Global grad norm (works for plain, DDP and FSDP2 DTensor parameters); clips when max_norm > 0."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"), foreach=True)
    if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
        norm = norm.full_tensor()
    return norm


def backward_step(model: nn.Module, batches: list[Batch], loss_fn: LossFn, count_fn: CountFn,
                  autocast: contextlib.AbstractContextManager | None = None,
                  no_sync: Callable[[], contextlib.AbstractContextManager] | None = None):
    """Forward + backward of every micro-batch, token-weighted; returns (loss sum, global count, metric sums)."""
    device = next(model.parameters()).device
    local = torch.stack([count_fn(b).to(device=device, dtype=torch.float64) for b in batches]).sum()
    n_global = all_reduce_sum(local)
    # DDP/FSDP average gradients over ranks; scaling by the world size turns that into a global sum
    scale = world_size() / n_global.clamp(min=1.0)
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    metric_sums: dict[str, torch.Tensor] = {}
    for i, b in enumerate(batches):
        last = i == len(batches) - 1
        with no_sync() if (no_sync is not None and not last) else contextlib.nullcontext():
            with autocast or contextlib.nullcontext():
                loss_sum, _, metrics = loss_fn(model, b)
            (loss_sum * scale.to(loss_sum.dtype)).backward()
        loss_total += loss_sum.detach().double()
        for k, v in metrics.items():
            metric_sums[k] = metric_sums.get(k, 0) + v.detach().double()
    return loss_total, n_global, metric_sums


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Batch], loss_fn: LossFn,
               count_fn: CountFn, grad_clip: float = 1.0, autocast: contextlib.AbstractContextManager | None = None,
               no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
               update: bool = True) -> StepResult:
    """One optimizer step over the micro-batches; skips the update on a non-finite loss/grad or an empty step.

    `update` is this rank's "my micro-batches carry a learning signal" (Task.has_signal). It is summed
    with the loss, so every rank agrees without another collective: when no rank has a signal, forward
    and backward still run (metrics, DDP's all-reduce) but the optimizer does not step, so the weights
    and its state (Adam moments, step count) stay bit-identical: no momentum or decoupled weight-decay
    drift on a zero-gradient step."""
    loss_total, n_global, metric_sums = backward_step(model, list(batches), loss_fn, count_fn, autocast, no_sync)
    names = sorted(metric_sums)
    flag = loss_total.new_tensor(float(update))
    sums = all_reduce_sum(torch.stack([loss_total, flag, *[metric_sums[k] for k in names]]))
    live = float(sums[1]) > 0  # some rank has a signal
    n = float(n_global)
    mean_loss = float(sums[0]) / n if n > 0 else math.nan
    norm = clip_grad_norm(model, grad_clip)
    finite = n > 0 and math.isfinite(mean_loss) and bool(torch.isfinite(norm))
    if finite and live:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    metrics = {k: float(v) / n for k, v in zip(names, sums[2:].tolist())} if n > 0 else {}
    return StepResult(mean_loss, float(norm) if finite else math.nan, finite, int(n), metrics, finite and live)
