"""LM plots read banyan.logger's schema: eval rows (either form) are validation points, never train points."""

import json

from banyan.logger import read_metrics
from banyan.rl.curves import eval_curve
from banyan.train.plots import plot_run, train_points, val_points


def write_rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_rows_are_val_points_not_train_points(tmp_path):
    p = write_rows(tmp_path / "metrics.jsonl", [
        {"step": 0, "tokens": 0, "loss": 4.0, "lr": 0.0},
        {"step": 10, "kind": "train", "tokens": 1000, "loss": 3.0, "lr": 1e-3},
        {"step": 10, "kind": "eval", "val_loss": 3.2, "val_bpb": 1.5},       # separate eval row, no tokens
        {"step": 20, "kind": "train", "tokens": 2000, "loss": 2.0, "lr": 1e-3},
        {"step": 15, "kind": "eval", "loss": 2.9},                           # eval row using plain names
        {"step": 20, "kind": "train", "tokens": 2000, "val_loss": 2.5, "val_bpb": 1.2},  # val_* on a train row
    ])
    rows = read_metrics(p)
    assert [r["step"] for r in train_points(rows)] == [0, 10, 20]
    assert val_points(rows) == [
        {"step": 10, "tokens": 1000.0, "val_loss": 3.2, "val_bpb": 1.5},
        {"step": 15, "tokens": 1500.0, "val_loss": 2.9, "val_bpb": None},   # tokens interpolated from train rows
        {"step": 20, "tokens": 2000, "val_loss": 2.5, "val_bpb": 1.2}]
    written = plot_run(tmp_path)
    assert [w.name for w in written] == ["loss.png", "lr.png", "throughput.png"]
    assert all(w.stat().st_size > 1000 for w in written)
    assert sorted(q.name for q in (tmp_path / "plots").iterdir()) == ["loss.png", "lr.png", "throughput.png"]


def test_rl_eval_curve_reads_the_same_schema(tmp_path):
    p = write_rows(tmp_path / "metrics.jsonl", [
        {"step": 256, "time": 1.0, "kind": "train", "episode_return": 20.0},
        {"step": 512, "time": 2.0, "kind": "eval", "return_mean": 30.0},
        {"step": 768, "time": 3.0, "kind": "eval", "return_mean": None},   # a NaN return was logged as null
        {"step": 1024, "time": 4.0, "kind": "eval", "return_mean": 50.0}])
    steps, rets = eval_curve(read_metrics(p))
    assert steps.tolist() == [512, 1024] and rets.tolist() == [30.0, 50.0]
