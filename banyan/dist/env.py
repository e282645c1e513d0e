"""Process environment: rank, world size and device, read from torchrun's variables.

`DistEnv.from_env()` works in a plain `python` process (world of one, no process group) and
under `torchrun` (initialises the default process group: NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    @staticmethod
    def from_env(device: str = "auto") -> "DistEnv":
        """Read RANK/WORLD_SIZE/LOCAL_RANK (set by torchrun) and pick the device; init the process group."""
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        dev = resolve_device(device, local_rank)
        if world > 1 and not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
        return DistEnv(rank, local_rank, world, local_world, dev)

    def barrier(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` = cuda:LOCAL_RANK when CUDA is present, else cpu; `cuda` picks the local rank's GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", local_rank)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from banyan.config import ConfigError

        raise ConfigError(f"train.device is '{device}' but CUDA is not available on this machine")
    return dev
