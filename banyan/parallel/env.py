"""Process environment: rank, world size and device, read from torchrun's variables.

`DistEnv.from_env()` works in a plain `python` process (world of one, no process group) and
under `torchrun` (initialises the default process group: NCCL on CUDA, gloo on CPU).

`agree_on_errors(env)` wraps set-up code that every rank runs: if any rank fails, every rank
stops, rank 0 prints one clear message (naming the failing ranks) and the others exit quietly,
so a bad flag does not print N copies or leave N-1 ranks waiting in a collective forever.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


class QuietExit(SystemExit):
    """A non-zero rank stopping because of an error that rank 0 reports (exit code 2, nothing printed)."""

    def __init__(self):
        super().__init__(2)


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this DistEnv created the process group (and so destroys it in close())

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
    def from_env(device: str = "auto", *, flag: str = "train.device") -> "DistEnv":
        """Read RANK/WORLD_SIZE/LOCAL_RANK (set by torchrun) and pick the device; init the process group.

        BANYAN_DIST_TIMEOUT_S (default 600) bounds every collective, so a dead peer turns into an
        error instead of a hang. `flag` names the device setting in errors.
        """
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        dev = resolve_device(device, local_rank, flag=flag)
        owns = False
        if world > 1 and not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            timeout = timedelta(seconds=float(os.environ.get("BANYAN_DIST_TIMEOUT_S", 600)))
            dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None, timeout=timeout)
            owns = True
        return DistEnv(rank, local_rank, world, local_world, dev, owns)

    def barrier(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank (one tiny all-reduce; no-op on one process)."""
        if not (self.distributed and dist.is_initialized()):
            return flag
        t = torch.tensor([int(flag)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(device: str = "auto", local_rank: int = 0, *, flag: str = "train.device") -> torch.device:
    """The one device resolver: `auto` = cuda:LOCAL_RANK when CUDA is present, else cpu; `cuda` picks
    the local rank's GPU; anything else is passed to torch.device. `flag` names the setting in errors."""
    from banyan.errors import ConfigError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"{flag} is '{device}'; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{flag} is '{device}' but CUDA is not available on this machine")
    return dev


# ----------------------------------------------------------------------------- agreeing across ranks
def gather_json(obj, env: DistEnv) -> list:
    """All-gather a JSON-able object from every rank (as UTF-8 bytes in a tensor: no pickle involved)."""
    if not (env.distributed and dist.is_initialized()):
        return [obj]
    dev = env.device if env.device.type == "cuda" else torch.device("cpu")
    data = torch.tensor(list(json.dumps(obj, sort_keys=True).encode()), dtype=torch.uint8, device=dev)
    sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(env.world_size)]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64, device=dev))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=dev)
    padded[:data.numel()] = data
    bufs = [torch.zeros(longest, dtype=torch.uint8, device=dev) for _ in range(env.world_size)]
    dist.all_gather(bufs, padded)
    return [json.loads(bytes(b[:int(s.item())].tolist()).decode()) for b, s in zip(bufs, sizes)]


@contextlib.contextmanager
def agree_on_errors(env: DistEnv):
    """Run a block on every rank; if it fails on any rank, stop all of them with one message.

    Rank 0 raises its own error (or a BanyanError quoting the failing ranks' errors); other ranks
    raise QuietExit. Errors outside banyan's own types also print their traceback on their rank.
    """
    from banyan.errors import BanyanError

    error: BaseException | None = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 - every failure must reach the other ranks
        if not env.distributed:
            raise
        error = e
        if not isinstance(e, (BanyanError, FileNotFoundError)):
            traceback.print_exc(file=sys.stderr)
    if not env.distributed:
        return
    msg = None if error is None else f"{type(error).__name__}: {error}"
    everyone = gather_json(msg, env)
    if all(m is None for m in everyone):
        return
    if not env.is_main:
        raise QuietExit()
    if error is not None and all(m in (None, msg) for m in everyone):
        raise error
    by_msg: dict[str, list[int]] = {}
    for r, m in enumerate(everyone):
        if m is not None:
            by_msg.setdefault(m, []).append(r)
    parts = [f"rank {','.join(map(str, rs))}: {m}" for m, rs in by_msg.items()]
    raise BanyanError("set-up failed on some ranks; " + " | ".join(parts))


def check_same_config(config: dict, env: DistEnv, what: str = "config") -> None:
    """Every rank must run the same resolved config; names the first keys that differ."""
    from banyan.errors import ConfigError

    everyone = gather_json(config, env)
    diffs = []
    for r, other in enumerate(everyone):
        for key in _diff_keys(everyone[0], other):
            diffs.append(f"{key}: rank 0 has {_get(everyone[0], key)!r}, rank {r} has {_get(other, key)!r}")
    if diffs:
        raise ConfigError(f"the ranks were started with different {what}s ({len(diffs)} differences): "
                          + "; ".join(diffs[:5]) + ("; ..." if len(diffs) > 5 else ""))


def _diff_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _get(d, dotted: str):
    for k in dotted.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d
