"""One flat buffer behind many small parameters, so per-step optimizer work is one tensor, not a dozen.

PPO on CartPole makes ~4k gradient steps on two 3-layer MLPs (12 parameter tensors, ~9k numbers). At that
size every step's zero_grad, global-norm clipping (torch's foreach path: a norm per tensor, a stack, a
norm, a multiply per tensor) and fused Adam are all per-tensor bookkeeping. `FlatParams` re-seats every
parameter's storage as a view into one buffer and every `.grad` as a view into a second one; the
modules, their Parameter objects, state_dicts and checkpoints are unchanged, autograd accumulates into
the grad views in place, and the optimizer, the clipping and the zeroing see one tensor each:

    flat = FlatParams(loss_fn.parameters())
    optim = torch.optim.Adam([flat.param], ...)        # Adam is elementwise: the same update per number
    flat.zero_grad(); loss.backward(); flat.clip_grad_norm_(0.5); optim.step()

Measured on the 2-core box (ClipPPOLoss, batch 256): 1.9 -> 1.8 ms per gradient step. Results match the
per-tensor path up to the summation order of the gradient norm (float32 rounding, ~1e-7).
Never set the parameters' grads to None afterwards (`optimizer.zero_grad()` on another optimizer
would): that unlinks them from the buffer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class FlatParams:
    """`param`: one Parameter sharing storage with all given parameters; `grad`: their gradients, flat [N]."""

    def __init__(self, params: Iterable[torch.nn.Parameter]):
        params = [p for p in dict.fromkeys(params) if p.requires_grad]  # unique, in order
        if not params:
            raise ValueError("FlatParams needs at least one parameter that requires grad")
        kinds = {(p.dtype, p.device) for p in params}
        if len(kinds) > 1:
            raise ValueError(f"FlatParams needs one dtype and device, got {sorted(map(str, kinds))}")
        n = sum(p.numel() for p in params)
        data = torch.empty(n, dtype=params[0].dtype, device=params[0].device)
        self.grad = torch.zeros_like(data)
        i = 0
        for p in params:
            k = p.numel()
            data[i:i + k].copy_(p.detach().reshape(-1))
            p.data = data[i:i + k].view_as(p)
            p.grad = self.grad[i:i + k].view_as(p)  # backward accumulates into it in place
            i += k
        self.params = params
        self.param = torch.nn.Parameter(data)
        self.param.grad = self.grad

    def zero_grad(self) -> None:
        self.grad.zero_()

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """torch.nn.utils.clip_grad_norm_'s rule (scale by min(1, max_norm / (norm + 1e-6))) in two ops."""
        total = torch.linalg.vector_norm(self.grad)
        self.grad.mul_((max_norm / (total + 1e-6)).clamp_max(1.0))
        return total
