"""Shared logging for the RL lab: metrics.jsonl, TensorBoard, W&B (offline), learning-curve plots.

Every metric row is `{"kind": "train" | "eval", "step": env_steps, ...}` in OUT/metrics.jsonl;
the same scalars go to TensorBoard (OUT/tb) and, when asked, to W&B in offline mode (OUT/wandb).
`plot_curves` draws return vs environment steps as the mean over seeds with a min-max band.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write(path: str | Path, text: str) -> Path:
    """Write text to path via a temporary file + os.replace (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write(path, json.dumps(data, indent=2, default=float) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl (a truncated last line, e.g. from a killed run, is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsLogger:
    """Append-only metrics.jsonl plus optional TensorBoard and W&B sinks."""

    def __init__(self, out: str | Path, tensorboard: bool = True, wandb: bool = False, project: str = "banyan",
                 run_name: str = "", config: dict | None = None):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._file = open(self.out / "metrics.jsonl", "w")
        self._tb = self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out / "tb"))
        if wandb:
            import wandb as wandb_lib

            # Offline unless the user has a key: runs can be synced later with `wandb sync OUT/wandb/...`.
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
            self._wandb = wandb_lib.init(project=project, name=run_name or self.out.name, dir=str(self.out),
                                         config=config or {}, mode=mode, reinit="finish_previous")

    def log(self, kind: str, step: int, **values: float) -> dict:
        row = {"kind": kind, "step": int(step), **{k: _clean(v) for k, v in values.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        scalars = {f"{kind}/{k}": v for k, v in row.items() if k not in ("kind", "step") and v is not None}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=int(step))
        return row

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _clean(v: Any) -> Any:
    v = float(v) if hasattr(v, "item") or isinstance(v, (int, float)) else v
    return None if isinstance(v, float) and not math.isfinite(v) else v


def eval_curve(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean eval return) from metrics rows."""
    ev = [r for r in rows if r["kind"] == "eval"]
    return np.array([r["step"] for r in ev]), np.array([r["return_mean"] for r in ev])


def plot_curves(curves: dict[str, list[tuple[np.ndarray, np.ndarray]]], path: str | Path, title: str,
                threshold: float | None = None) -> Path:
    """One line per label: mean over its runs (seeds) with a min-max band, on a common step grid.

    curves: label -> [(steps, returns), ...] one pair per seed. Seeds are interpolated onto the union of
    their steps (each run evaluates at the same interval, so this is usually exact).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, runs in curves.items():
        runs = [(s, r) for s, r in runs if len(s)]
        if not runs:
            continue
        grid = np.unique(np.concatenate([s for s, _ in runs]))
        grid = grid[grid <= min(s[-1] for s, _ in runs)]
        ys = np.stack([np.interp(grid, s, r) for s, r in runs])  # [seeds, points]
        line, = ax.plot(grid, ys.mean(0), label=f"{label} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(grid, ys.min(0), ys.max(0), alpha=0.2, color=line.get_color())
    if threshold is not None:
        ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
