"""The Task interface: what a training stage (pretrain, sft, dpo, reward, grpo) gives the one Trainer.

The Trainer (banyan/train/trainer.py) owns set-up, the loop, checkpoints and logging; a Task owns
its data and its loss:

    setup(cfg, env)            open data; may fill cfg.model.vocab_size; runs before the model is built
    build_model(cfg)           the model on the meta device (default: banyan.model.build_model; a stage
                               may wrap it, e.g. the reward model's scalar head)
    load_init(ck, par, ...)    --init weights into the parallelized model (default: the whole checkpoint)
    batch(step, micro)         the micro-batch `micro` of optimizer step `step` on this rank: a dict of
                               tensors, a pure function of (step, micro, rank, world size, seed), so a
                               resumed run sees exactly the batches an uninterrupted one would
    count(batch)               how many items the loss sums over (trained tokens, pairs, ...), known
                               before the forward pass: the step all-reduces the global count first
    loss(model, batch)         -> (loss_sum, count, metric_sums): the SUM of per-item losses, so the step
                               can divide by the global count (every trained token weighs the same
                               whatever the padding, accumulation and world size)
    evaluate(model)            -> {name: value} on held-out data (collective: every rank calls it)
    sample(raw_model, step)    -> text to show, or None (main rank only, full model on the rank)
    state_dict / load_state_dict   what the Task needs in a checkpoint (JSON-able)

`metric_sums` are sums over the same counted items as `loss_sum`; the Trainer logs each divided by
the global count (e.g. DPO's reward accuracy = correct pairs / pairs).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

IGNORE = -100  # label of a position that is not trained (padding, prompts, masked turns)
Batch = dict[str, torch.Tensor]


def labelled_count(batch: Batch) -> torch.Tensor:
    """Positions of `batch` whose label is not IGNORE (the trained tokens of an LM batch)."""
    return (batch["labels"] != IGNORE).sum()


class Task(abc.ABC):
    """Base class of a training stage; see the module docstring for the contract."""

    name: str = "task"
    headline: tuple[str, ...] = ("val_loss", "val_bpb")  # summary keys the run's last line shows
    tokenizer = None  # banyan.data.tokenizer.Tokenizer, when the stage has one

    def setup(self, cfg, env) -> None:
        """Open data (runs on every rank inside agree_on_errors, before the model exists)."""

    def build_model(self, cfg) -> nn.Module:
        """The model this stage trains, on the meta device (the Trainer parallelizes it)."""
        from banyan.model import build_model

        return build_model(cfg.model, device="meta")

    def load_init(self, ck: Path, par, cfg, env) -> None:
        """Load the --init checkpoint `ck` into the parallelized model `par` (no optimizer, no RNG)."""
        from banyan.train.init_from import load_init_weights

        load_init_weights(ck, par, cfg, env)

    @abc.abstractmethod
    def batch(self, step: int, micro: int) -> Batch:
        """Micro-batch `micro` of optimizer step `step` for this rank (CPU tensors)."""

    def count(self, batch: Batch) -> torch.Tensor:
        """Items the loss of `batch` sums over; default: positions whose label is not IGNORE."""
        return labelled_count(batch)

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(sum of per-item losses, item count, {metric: sum over items}) for one micro-batch."""

    def has_signal(self, batches: list[Batch]) -> bool:
        """False when this rank's micro-batches of a step carry no gradient (e.g. GRPO: every advantage 0);
        the Trainer skips the optimizer step when no rank has a signal (counted as skipped_no_signal)."""
        return True

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics (every rank calls it; reduce across ranks inside)."""
        return {}

    def sample(self, raw_model: nn.Module, step: int) -> str | None:
        """A text sample to print and log, or None."""
        return None

    def positions(self, batch: Batch) -> int:
        """Token positions the model processes for `batch` (for tokens/s and MFU)."""
        return int(batch["input_ids"].numel())

    def tokenizer_files(self) -> list[Path]:
        """Files copied into every checkpoint (tokenizer.json and, when present, tokenizer_config.json)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
