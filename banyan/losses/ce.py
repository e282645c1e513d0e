"""Next-token cross-entropy, plain or chunked so the [B*T, V] logits never exist at once.

With a 32k-128k vocabulary the logits are the largest activation of a small model: B*T*V fp32
values, plus as much again for their gradient (llama-1b at micro-batch 4 x 2048: 4 * 2048 * 32000
* 4 B = 1 GiB each). `lm_loss(..., chunk=C)` goes through the head `C` positions at a time:

forward   for each chunk: logits_c = h_c @ W^T  [C, V] -> logsumexp_c [C] and the target logit;
          only `lse` [N] (4 bytes per position) is kept besides the inputs.
backward  for each chunk again: recompute logits_c, softmax_c = exp(logits_c - lse_c),
          subtract 1 at the target, scale by the incoming gradient, then
          dH_c = dlogits_c @ W  [C, D] and dW += dlogits_c^T @ h_c  [V, D].

This is a custom `torch.autograd.Function`. `torch.utils.checkpoint` around each chunk would
also keep only per-chunk tensors, but it re-runs the chunk's whole forward graph under autograd in
backward (logits, log_softmax and their saved outputs: ~3 [C, V] fp32 buffers alive at once); the
Function needs one [C, V] buffer that becomes the gradient in place, and its saved set is explicit:
`hidden`, `weight` (the tensors themselves, alive anyway), `targets` and `lse` [N]. Nothing of
size V is saved (tests check this with saved-tensor hooks). The price is one extra
[C, D] x [D, V] matmul per chunk in backward (recomputing the logits), ~+1/3 of the head's FLOPs.
Same idea as Liger-Kernel's fused linear cross-entropy and Apple's Cut Cross-Entropy (Wijmans et
al. 2024), in plain PyTorch.

Precision: the matmuls run in the autocast dtype when autocast is on (else in the inputs' dtype);
logsumexp, softmax and the weight-gradient accumulator are fp32. In fp32 the result equals
`F.cross_entropy(h @ W^T, t)` and its gradients to rounding (tests: 1e-6).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Reduction = Literal["mean", "sum", "none"]


def _check(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, reduction: str) -> None:
    if hidden.dim() != 3:
        raise ValueError(f"lm_loss: hidden must be [B, T, D], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.size(1) != hidden.size(-1):
        raise ValueError(f"lm_loss: weight must be [V, D={hidden.size(-1)}], got shape {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:2]:
        raise ValueError(f"lm_loss: targets must be [B, T] = {tuple(hidden.shape[:2])}, got {tuple(targets.shape)}")
    if chunk < 0:
        raise ValueError(f"lm_loss: chunk must be >= 0 (0 = no chunking), got {chunk}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"lm_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _reduce(per_pos: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """per_pos [N] fp32 (0 at ignored positions) -> mean over valid positions / sum / [N]."""
    if reduction == "sum":
        return per_pos.sum()
    if reduction == "mean":
        # same as F.cross_entropy: nan when every target is ignored (0/0)
        return per_pos.sum() / valid.sum()
    return per_pos


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                  reduction: Reduction = "mean") -> torch.Tensor:
    """Plain next-token cross-entropy: logits [B, T, V] (any dtype; computed in fp32), targets [B, T].

    reduction 'none' returns [B, T]."""
    out = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=ignore_index,
                          reduction=reduction)
    return out.view(targets.shape) if reduction == "none" else out


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(hidden.dtype, weight.dtype)


class _ChunkedLinearCE(torch.autograd.Function):
    """Per-position CE of (hidden @ weight^T, targets), `chunk` rows at a time. Returns [N] fp32."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                ignore_index: int, dtype: torch.dtype) -> torch.Tensor:
        # hidden [N, D], weight [V, D], targets [N] (int64)
        n = hidden.size(0)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            losses = torch.zeros(n, dtype=torch.float32, device=hidden.device)
            lse = torch.zeros(n, dtype=torch.float32, device=hidden.device)
            for s in range(0, n, chunk):
                h = hidden[s:s + chunk].to(dtype)
                logits = (h @ w.T).float()  # [c, V]: the only V-sized tensor, freed each iteration
                t = targets[s:s + chunk]
                valid = t != ignore_index
                lse_c = torch.logsumexp(logits, dim=-1)  # [c]
                tgt = logits.gather(1, t.masked_fill(~valid, 0)[:, None]).squeeze(1)  # [c]
                losses[s:s + chunk] = (lse_c - tgt) * valid
                lse[s:s + chunk] = lse_c
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk, ctx.ignore_index, ctx.dtype = chunk, ignore_index, dtype
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            for s in range(0, hidden.size(0), chunk):
                h = hidden[s:s + chunk].to(dtype)
                t = targets[s:s + chunk]
                valid = t != ctx.ignore_index
                # d loss_i / d logits_i = softmax_i - onehot(t_i), zero at ignored rows, times the upstream grad
                dlogits = torch.exp((h @ w.T).float() - lse[s:s + chunk, None])  # [c, V]
                dlogits.scatter_add_(1, t.masked_fill(~valid, 0)[:, None], -valid[:, None].float())
                dlogits.mul_((grad_losses[s:s + chunk] * valid)[:, None])
                d = dlogits.to(dtype)
                if need_h:
                    grad_h[s:s + chunk] = (d @ w).to(hidden.dtype)  # [c, D]
                if need_w:
                    grad_w.add_((d.T @ h).float())  # [V, D]
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None, None


def lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 0,
            ignore_index: int = -100, reduction: Reduction = "mean") -> torch.Tensor:
    """Cross-entropy of the LM head: hidden [B, T, D] (after the final norm), weight [V, D], targets [B, T].

    chunk == 0: logits = hidden @ weight^T (autocast applies), then fp32 `F.cross_entropy`.
    chunk  > 0: `chunk` positions (of the flattened B*T) at a time, never materialising [B*T, V]
                in forward or backward (see module docstring); chunk need not divide B*T.
    Positions whose target is `ignore_index` contribute nothing; 'mean' averages over the others.
    reduction 'none' returns per-position losses [B, T] (fp32).
    """
    _check(hidden, weight, targets, chunk, reduction)
    if chunk == 0:
        return cross_entropy(F.linear(hidden, weight), targets, ignore_index, reduction)
    flat_t = targets.reshape(-1)
    valid = flat_t != ignore_index
    bad = valid & ((flat_t < 0) | (flat_t >= weight.size(0)))
    if bool(bad.any()):  # F.cross_entropy would raise (CPU) or device-assert (CUDA); say which value
        raise ValueError(f"lm_loss: target {int(flat_t[bad][0])} is outside the vocabulary [0, {weight.size(0)})")
    per_pos = _ChunkedLinearCE.apply(hidden.reshape(-1, hidden.size(-1)), weight, flat_t, chunk, ignore_index,
                                     _compute_dtype(hidden, weight))
    out = _reduce(per_pos, valid, reduction)
    return out.view(targets.shape) if reduction == "none" else out
