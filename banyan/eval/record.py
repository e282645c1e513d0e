"""Eval results kept with the run they score, so the model card of an export can show them.

`banyan eval --model RUN` (a banyan run or one of its checkpoints) merges its results into
RUN/evals/CHECKPOINT.json, one entry per task spec:

    {"hellaswag:hs.jsonl": {"acc": 0.31, "acc_norm": 0.33, "items": 500, "limit": 500}, ...}

A later evaluation of the same task on the same checkpoint replaces that task's entry. The file
lives outside the checkpoint folder (whose files and manifest are the trainer's) and is written
atomically. `banyan export hf` reads it for the card's evaluation table (banyan/export/card.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from banyan.errors import CheckpointError
from banyan.io import atomic_write_json

EVALS_DIR = "evals"
_TIMING = ("seconds", "items_per_s")  # how long it took is not a property of the model


def results_path(run_dir: Path, ckpt: Path) -> Path:
    return Path(run_dir) / EVALS_DIR / f"{Path(ckpt).name}.json"


def read_results(run_dir: Path | None, ckpt: Path) -> dict[str, dict[str, float]]:
    """The recorded results of `ckpt` ({} when none were recorded); a torn file is a CheckpointError."""
    if run_dir is None:
        return {}
    path = results_path(run_dir, ckpt)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable eval results ({e}); delete it or run banyan eval again") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object of task -> metrics, got {type(data).__name__}")
    return data


def record_results(run_dir: Path, ckpt: Path, results: dict[str, dict[str, float]], limit: int) -> Path:
    """Merge `results` (banyan.eval.run.evaluate's) into the checkpoint's record; returns the file."""
    merged = read_results(run_dir, ckpt)
    for task, metrics in results.items():
        merged[task] = {k: v for k, v in metrics.items() if k not in _TIMING
                        and not (isinstance(v, float) and not math.isfinite(v))} | {"limit": limit}
    path = results_path(run_dir, ckpt)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, merged, indent=1)
    return path
