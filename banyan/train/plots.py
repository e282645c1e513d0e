"""PNG plots of a run from its metrics.jsonl: loss and val loss vs tokens, lr, throughput."""

from __future__ import annotations

from pathlib import Path

from banyan.train.metrics import read_metrics


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write loss.png, lr.png and throughput.png into RUN/plots; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in rows if r.get("loss") is not None]
    val = [r for r in rows if r.get("val_loss") is not None]
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []

    def save(fig, name):
        path = out / name
        tmp = path.with_suffix(".tmp.png")
        fig.tight_layout()
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(path)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], label="train loss", lw=1, alpha=0.8)
    if val:
        ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss", lw=2)
        if val[-1].get("val_bpb") is not None:
            ax.set_title(f"{run_dir.name}: final val loss {val[-1]['val_loss']:.3f}, val bpb {val[-1]['val_bpb']:.3f}")
    ax.set_xlabel("tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "loss.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([r["step"] for r in train], [r["lr"] for r in train])
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    save(fig, "lr.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    tp = [r for r in train if r.get("tokens_per_s")]
    ax.plot([r["step"] for r in tp], [r["tokens_per_s"] for r in tp])
    ax.set_xlabel("step")
    ax.set_ylabel("tokens / s")
    ax.grid(alpha=0.3)
    save(fig, "throughput.png")
    return written
