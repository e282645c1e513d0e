"""PNG plots of an LM run from its metrics.jsonl: loss and val loss vs tokens, lr, throughput.

Rows follow banyan.logger's schema. Train curves come from `kind == "train"` rows only;
validation points come from either form a trainer may log: separate `kind == "eval"` rows
(with `val_loss`/`val_bpb`, or `loss`/`bpb`) or `val_*` fields on a train row. An eval row without
`tokens` is placed at the token count the train rows reached at its step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from banyan.io import save_figure
from banyan.logger import read_metrics


def _first(row: dict, *keys: str):
    """The first of `keys` that the row holds with a non-null value (None if none)."""
    return next((row[k] for k in keys if row.get(k) is not None), None)


def train_points(rows: list[dict]) -> list[dict]:
    """The train rows that carry a loss (eval rows are never drawn as training)."""
    return [r for r in rows if r["kind"] == "train" and r.get("loss") is not None]


def val_points(rows: list[dict]) -> list[dict]:
    """Validation results as [{"step", "tokens", "val_loss", "val_bpb"}], in step order.

    `tokens` is taken from the row or, for eval rows without it, interpolated from the train
    rows' (step, tokens); it is None when neither is known.
    """
    train = [r for r in rows if r["kind"] == "train" and r.get("tokens") is not None]
    steps, tokens = np.array([r["step"] for r in train]), np.array([r["tokens"] for r in train])
    points = []
    for r in rows:
        if r["kind"] == "eval":
            loss, bpb = _first(r, "val_loss", "loss"), _first(r, "val_bpb", "bpb")
        elif r["kind"] == "train":
            loss, bpb = r.get("val_loss"), r.get("val_bpb")
        else:
            continue
        if loss is None:
            continue
        tok = r.get("tokens")
        if tok is None and len(train):
            tok = float(np.interp(r["step"], steps, tokens))
        points.append({"step": r["step"], "tokens": tok, "val_loss": loss, "val_bpb": bpb})
    return sorted(points, key=lambda p: p["step"])


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write loss.png, lr.png and throughput.png into RUN/plots; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    train, val = train_points(rows), val_points(rows)
    out = run_dir / "plots"
    # tokens on the x axis when every point has them, else optimizer steps
    x = "tokens" if all(r.get("tokens") is not None for r in train + val) else "step"

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([r[x] for r in train], [r["loss"] for r in train], label="train loss", lw=1, alpha=0.8)
    if val:
        ax.plot([p[x] for p in val], [p["val_loss"] for p in val], "o-", label="val loss", lw=2)
        bpb = f", val bpb {val[-1]['val_bpb']:.3f}" if val[-1]["val_bpb"] is not None else ""
        ax.set_title(f"{run_dir.name}: final val loss {val[-1]['val_loss']:.3f}{bpb}")
    ax.set_xlabel(x)
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    written = [save_figure(fig, out / "loss.png")]

    for name, key, label in (("lr.png", "lr", "learning rate"), ("throughput.png", "tokens_per_s", "tokens / s")):
        pts = [r for r in train if r.get(key) is not None]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot([r["step"] for r in pts], [r[key] for r in pts])
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(save_figure(fig, out / name))
    return written
