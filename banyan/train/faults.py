"""Fault injection for resilience tests: `BANYAN_FAULT=kill@12` (SIGKILL this process after step 12),
`kill@12:rank1` (only on rank 1), `killsave@12` (SIGKILL while checkpoint 12 is half-written: this
rank's files on disk, no manifest yet), `nan@5` (poison the loss from step 5 on).

Each `kill` fires once per output folder (a marker file records it), so a job restarted by
torchrun's --max-restarts, or resumed by hand, runs through the same step the second time.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _spec() -> tuple[str, int, int | None] | None:
    raw = os.environ.get("BANYAN_FAULT", "")
    if not raw:
        return None
    kind, _, rest = raw.partition("@")
    step, _, rank = rest.partition(":rank")
    return kind, int(step), int(rank) if rank else None


def maybe_kill(step: int, rank: int, out: Path) -> None:
    """`kill@N`: SIGKILL after step N (called by the Trainer after the step's checkpoint)."""
    _fire("kill", step, rank, out)


def maybe_kill_mid_save(step: int, rank: int, out: Path) -> None:
    """`killsave@N`: SIGKILL while checkpoint N is half-written (called by the checkpoint writers)."""
    _fire("killsave", step, rank, out)


def _fire(kind: str, step: int, rank: int, out: Path) -> None:
    spec = _spec()
    if not spec or spec[0] != kind or step != spec[1] or (spec[2] is not None and spec[2] != rank):
        return
    marker = Path(out) / f".fault-fired-rank{rank}"
    if marker.exists():
        return
    marker.write_text(str(step))
    os.kill(os.getpid(), signal.SIGKILL)


def nan_from_step() -> int | None:
    spec = _spec()
    return spec[1] if spec and spec[0] == "nan" else None
