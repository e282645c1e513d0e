"""Activation checkpointing applied from outside the model, one transformer block at a time.

`apply_activation_checkpointing(model, mode)` makes each chosen block of `model.blocks()` run its
forward under `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`: the block keeps only
its inputs (the residual stream [B, T, D] and RoPE cos/sin) and recomputes everything else in
backward. Modes:

* ``none``       undo any checkpointing (blocks run normally).
* ``full``       every block: activation memory ~ n_layer * B*T*D (the block inputs) plus one block's
                 worth during its recompute; costs one extra forward of the blocks (~+33% FLOPs).
* ``selective``  every other block (0, 2, 4, ...): about half the activation memory saved for half
                 the recompute. This is *layer*-selective checkpointing (as torchtitan's
                 `selective_ac_option=2`), not the op-selective scheme of Korthikanti et al. 2022.

How: the block's class is swapped for a cached subclass whose `forward` calls checkpoint on the
original `forward`. No wrapper module is inserted, so parameter names and `state_dict()` keys are
unchanged (torch's `checkpoint_wrapper` would add `_checkpoint_wrapped_module.` to every key and
break checkpoints and HF conversion), and FSDP/DDP/torch.compile see the same module tree.
Non-reentrant checkpoint restores the RNG state (dropout masks match) and the autocast state.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from banyan.errors import BanyanError

Mode = Literal["none", "full", "selective"]
_CACHE: dict[type, type] = {}


def _checkpointed_class(cls: type) -> type:
    """A subclass of `cls` whose forward runs under non-reentrant torch.utils.checkpoint."""
    if getattr(cls, "_banyan_ac_base", None) is not None:
        return cls
    if cls not in _CACHE:
        def forward(self, *args, **kwargs):
            return checkpoint(cls.forward, self, *args, use_reentrant=False, **kwargs)

        _CACHE[cls] = type(f"Checkpointed{cls.__name__}", (cls,), {
            "forward": forward, "_banyan_ac_base": cls, "__module__": cls.__module__,
            "__doc__": f"{cls.__name__} with activation checkpointing (banyan.parallel.ac)."})
    return _CACHE[cls]


def _uncheckpoint(block: nn.Module) -> None:
    base = getattr(type(block), "_banyan_ac_base", None)
    if base is not None:
        block.__class__ = base


def is_checkpointed(block: nn.Module) -> bool:
    return getattr(type(block), "_banyan_ac_base", None) is not None


def apply_activation_checkpointing(model: nn.Module, mode: Mode) -> int:
    """Checkpoint the blocks of `model.blocks()` per `mode`; returns how many blocks are checkpointed.

    Idempotent: applying a mode replaces whatever mode was applied before.
    """
    if mode not in ("none", "full", "selective"):
        raise BanyanError(f"activation checkpointing mode must be none, full or selective; got {mode!r}")
    if not hasattr(model, "blocks"):
        raise BanyanError(f"{type(model).__name__} has no blocks() method; activation checkpointing wraps "
                          "each transformer block it returns")
    count = 0
    for i, block in enumerate(model.blocks()):
        _uncheckpoint(block)
        if mode == "full" or (mode == "selective" and i % 2 == 0):
            block.__class__ = _checkpointed_class(type(block))
            count += 1
    return count
