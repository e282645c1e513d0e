"""Validation of a language model: mean loss per scored token and exact bits per byte.

Goes through the stage's own loss function (so a chunked head, masked SFT turns or any other
labelling is scored exactly as it is trained) and banyan.data.metrics for the byte count:

    for each held-out batch:  nats += loss_sum;  tokens += count;  bytes += UTF-8 bytes of the labels
    (all ranks summed)        val_loss = nats / tokens;  val_bpb = nats / (ln 2 * bytes)
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
import torch.nn as nn

from banyan.data.metrics import bits_per_byte, target_bytes

IGNORE = -100


@torch.no_grad()
def held_out_sums(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], loss_fn: Callable,
                  device: torch.device, autocast: contextlib.AbstractContextManager | None = None
                  ) -> tuple[float, dict[str, float]]:
    """(item count, {"loss": loss sum, metric: sum}) of a Task-style loss over held-out batches, summed over
    ranks (collective under torch.distributed), in eval mode; fp64 accumulation."""
    from banyan.train.step import all_reduce_sum

    was_training = model.training
    model.eval()
    n = torch.zeros((), dtype=torch.float64, device=device)
    sums: dict[str, torch.Tensor] = {}
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast or contextlib.nullcontext():
            loss_sum, count, metrics = loss_fn(model, batch)
        for k, v in {"loss": loss_sum, **metrics}.items():
            sums[k] = sums.get(k, 0) + torch.as_tensor(v, device=device).detach().double()
        n += count.double().to(device)
    model.train(was_training)
    names = sorted(sums)
    total = all_reduce_sum(torch.stack([n, *[sums[k] for k in names]])).tolist()
    return total[0], dict(zip(names, total[1:]))


def evaluate_lm(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], loss_fn: Callable,
                token_bytes: torch.Tensor, autocast: contextlib.AbstractContextManager | None = None,
                prefix: str = "val_") -> dict[str, float]:
    """{prefix+'loss', prefix+'bpb', prefix+'tokens'} over `batches` (collective under torch.distributed)."""

    def with_bytes(m, batch):  # the UTF-8 bytes the scored labels stand for, summed like any metric
        loss_sum, count, _ = loss_fn(m, batch)
        return loss_sum, count, {"bytes": torch.tensor(float(target_bytes(batch["labels"], token_bytes, IGNORE)))}

    n_tok, sums = held_out_sums(model, batches, with_bytes, token_bytes.device, autocast)
    nats, n_bytes = sums.get("loss", 0.0), sums.get("bytes", 0.0)
    return {f"{prefix}loss": nats / max(n_tok, 1.0),
            f"{prefix}bpb": bits_per_byte(nats, int(n_bytes)) if n_bytes > 0 else float("nan"),
            f"{prefix}tokens": int(n_tok)}
