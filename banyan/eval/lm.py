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
def evaluate_lm(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], loss_fn: Callable,
                token_bytes: torch.Tensor, autocast: contextlib.AbstractContextManager | None = None,
                prefix: str = "val_") -> dict[str, float]:
    """{prefix+'loss', prefix+'bpb', prefix+'tokens'} over `batches` (collective under torch.distributed)."""
    from banyan.train.step import all_reduce_sum

    was_training = model.training
    model.eval()
    device = token_bytes.device
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # nats, scored tokens, bytes
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast or contextlib.nullcontext():
            loss_sum, count, _ = loss_fn(model, batch)
        stats[0] += loss_sum.double()
        stats[1] += count.double()
        stats[2] += target_bytes(batch["labels"], token_bytes, IGNORE)
    model.train(was_training)
    nats, n_tok, n_bytes = all_reduce_sum(stats).tolist()
    return {f"{prefix}loss": nats / max(n_tok, 1.0),
            f"{prefix}bpb": bits_per_byte(nats, int(n_bytes)) if n_bytes > 0 else float("nan"),
            f"{prefix}tokens": int(n_tok)}
