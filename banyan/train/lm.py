"""What every language-model stage shares: the token-summed causal LM loss and an `LMTask` base.

Pretraining (and supervised fine-tuning later) label each position with the next token id, or
IGNORE where nothing is trained; the loss is the SUM of cross-entropy over labelled positions so
the Trainer's step can weigh every trained token the same (banyan/train/step.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from banyan.train.task import IGNORE, Batch, Task


def causal_lm_loss(model: nn.Module, batch: Batch, chunk: int = 0):
    """(sum of next-token cross-entropy over labelled positions, their count, {}) for input_ids/labels [B, T].

    A packed batch also carries position_ids and doc_ids [B, T] (banyan.data.packing), passed to the model."""
    x, y = batch["input_ids"], batch["labels"]
    packed = {k: batch[k] for k in ("position_ids", "doc_ids") if k in batch}
    if chunk:
        # through forward (not .hidden_states) so DDP/FSDP hooks run; [B, T, D] -> chunked CE
        from banyan.losses import lm_loss

        hidden = model(x, return_hidden=True, **packed)
        core = getattr(model, "module", model)  # DDP wraps the model; FSDP2 does not
        loss_sum = lm_loss(hidden, core.output_weight(), y, chunk=chunk, ignore_index=IGNORE, reduction="sum")
    else:
        logits = model(x, **packed)  # [B, T, V]
        loss_sum = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss_sum, (y != IGNORE).sum(), {}


class LMTask(Task):
    """A stage whose loss is the causal LM loss; subclasses supply the data (batch, val_batches)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.env = None
        self.token_bytes: torch.Tensor | None = None

    def loss(self, model: nn.Module, batch: Batch):
        return causal_lm_loss(model, batch, self.cfg.train.chunked_loss)

    def val_batches(self):
        """Held-out batches (dicts of CPU tensors) for `evaluate`."""
        return []

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from banyan.eval.lm import evaluate_lm
        from banyan.train.step import autocast_for

        autocast = autocast_for(self.env.device, self.cfg.train.dtype)
        return evaluate_lm(model, self.val_batches(), self.loss, self.token_bytes, autocast)
