"""Bits per byte: a tokenizer-independent validation metric.

bpb = (sum over scored targets of cross-entropy in nats) / (ln 2 * UTF-8 bytes those targets stand for).
Two models with different vocabularies are compared on the same text by bpb, not by loss per token.
Special tokens (EOS) cost nats but stand for 0 bytes: predicting where a document ends is part of
coding the stream, so their loss stays in the numerator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """total_nats / (ln 2 * total_bytes)."""
    if total_bytes <= 0:
        raise ValueError(f"total_bytes must be positive, got {total_bytes}")
    return float(total_nats) / (math.log(2) * total_bytes)


def target_bytes(targets: torch.Tensor, token_bytes: torch.Tensor, ignore_index: int = -100) -> int:
    """Sum of the byte lengths of `targets` (any shape of ids); entries equal to `ignore_index` count 0."""
    tb = token_bytes.to(device=targets.device, dtype=torch.long)
    keep = targets != ignore_index
    return int(tb[targets.masked_fill(~keep, 0)].masked_fill(~keep, 0).sum().item())


def nats_and_bytes(logits: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor,
                   ignore_index: int = -100) -> tuple[float, int]:
    """(sum of per-token cross-entropy in nats, sum of target bytes) for logits [..., V], targets [...].

    Accumulate both over the validation set, then call `bits_per_byte(nats, bytes)`.
    """
    nats = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=ignore_index, reduction="sum")
    return float(nats.item()), target_bytes(targets, token_bytes, ignore_index)
