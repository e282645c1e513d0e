"""The one train step every stage shares (pretrain today; SFT / DPO reuse it with another loss).

    for each micro-batch (x, y) of the step:            # gradient accumulation
        with no_sync (all but last) and autocast:
            loss = loss_fn(model, x, y) / n_micro
        loss.backward()
    if every loss is finite: clip grads, optimizer.step()  else: skip the update
    optimizer.zero_grad()
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class StepResult:
    loss: float        # mean loss over the step's micro-batches (nats/token for LM losses)
    grad_norm: float   # global L2 norm before clipping (nan when skipped)
    finite: bool       # False when the loss or the gradient was nan/inf and the update was skipped


def autocast_for(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast where asked (auto = bf16 on CUDA, fp32 on CPU)."""
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "fp32"
    if dtype == "fp32":
        return contextlib.nullcontext()
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=torch_dtype)


def causal_lm_loss(chunk: int = 0) -> LossFn:
    """Next-token cross-entropy from the model's final hidden states (chunked when chunk > 0)."""

    def fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if chunk:
            # go through forward (not .hidden_states) so DDP/FSDP hooks run; [B,T,D] -> chunked CE
            from banyan.losses import lm_loss

            hidden = model(x, return_hidden=True)
            core = getattr(model, "module", model)  # DDP wraps the model; FSDP2 does not
            return lm_loss(hidden, core.output_weight(), y, chunk=chunk)
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    return fn


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Global grad norm (works for plain, DDP and FSDP2 DTensor parameters); clips when max_norm > 0."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"), foreach=True)
    if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
        norm = norm.full_tensor()
    return norm


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
               n_micro: int, loss_fn: LossFn, grad_clip: float = 1.0,
               autocast: contextlib.AbstractContextManager | None = None,
               no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
               all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> StepResult:
    """One optimizer step over `n_micro` micro-batches; skips the update on a non-finite loss/grad."""
    total = None
    for i, (x, y) in enumerate(batches):
        last = i == n_micro - 1
        sync_ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with sync_ctx:
            with autocast or contextlib.nullcontext():
                loss = loss_fn(model, x, y)
            (loss / n_micro).backward()
        total = loss.detach().float() if total is None else total + loss.detach().float()
    mean_loss = total / n_micro
    if all_reduce_mean is not None:
        mean_loss = all_reduce_mean(mean_loss)
    norm = clip_grad_norm(model, grad_clip)
    finite = bool(torch.isfinite(mean_loss)) and bool(torch.isfinite(norm))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(float(mean_loss), float(norm) if finite else math.nan, finite)
