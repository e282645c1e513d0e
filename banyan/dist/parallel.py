"""`parallelize()`: everything that wraps the model from outside, in one place.

The model files know nothing of this. Order matters (torchtitan's): activation checkpointing
per block, then torch.compile, then the data-parallel wrapper.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from banyan.config import ConfigError, RunConfig
from banyan.dist.env import DistEnv


@dataclass
class Parallelized:
    model: nn.Module                      # what the train step calls
    raw: nn.Module                        # the unwrapped model (state dict names are HF's)
    strategy: str = "single"
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None
    notes: list[str] = field(default_factory=list)

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if dist.is_initialized() and dist.get_world_size() > 1:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.AVG)
        return t


def choose_strategy(cfg: RunConfig, env: DistEnv) -> tuple[str, str]:
    """Resolve `auto`: returns (strategy, reason)."""
    s = cfg.parallel.strategy
    if s != "auto":
        return s, "asked for"
    if env.world_size == 1:
        return "single", "one process"
    return "ddp", f"{env.world_size} processes and the model fits each device"


def parallelize(model: nn.Module, cfg: RunConfig, env: DistEnv) -> Parallelized:
    strategy, why = choose_strategy(cfg, env)
    if strategy == "single" and env.world_size > 1:
        raise ConfigError(f"parallel.strategy 'single' with {env.world_size} processes; use ddp/zero1/zero2/zero3")
    if cfg.train.activation_checkpointing != "none":
        from banyan.dist.ac import apply_activation_checkpointing

        apply_activation_checkpointing(model, cfg.train.activation_checkpointing)
    compiled = torch.compile(model) if cfg.train.compile else model
    out = Parallelized(model=compiled, raw=model, strategy=strategy, notes=[f"strategy {strategy}: {why}"])
    if strategy == "single":
        return out
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [env.device.index] if env.device.type == "cuda" else None
        ddp = DDP(compiled, device_ids=ids, bucket_cap_mb=cfg.parallel.bucket_mb,
                  gradient_as_bucket_view=cfg.parallel.grad_as_bucket_view)
        out.model, out.no_sync = ddp, ddp.no_sync
        return out
    raise ConfigError(f"parallel.strategy '{strategy}' is not available in this build")
