"""Learning curves of RL runs: evaluation return vs environment steps, from metrics.jsonl.

Runs log through banyan.logger (rows `{"step": env_steps, "time", "kind": "train" | "eval", ...}`);
`eval_curve` picks the eval rows of one run and `plot_curves` draws the mean over seeds with a
min-max band.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from banyan.io import save_figure


def eval_curve(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean eval return) from metrics rows."""
    ev = [r for r in rows if r.get("kind", "train") == "eval" and r.get("return_mean") is not None]
    return np.array([r["step"] for r in ev]), np.array([r["return_mean"] for r in ev])


def plot_curves(curves: dict[str, list[tuple[np.ndarray, np.ndarray]]], path: str | Path, title: str,
                threshold: float | None = None) -> Path:
    """One line per label: mean over its runs (seeds) with a min-max band, on a common step grid.

    curves: label -> [(steps, returns), ...] one pair per seed. Seeds are interpolated onto the union of
    their steps (each run evaluates at the same interval, so this is usually exact).
    """
    # A bare Figure on the Agg canvas, not pyplot: pyplot's import alone is ~0.2 s of a ~10 s `rl train`.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
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
    return save_figure(fig, path)
