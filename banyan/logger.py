"""The one metrics logger for LM and RL runs: OUT/metrics.jsonl, TensorBoard (OUT/tb), W&B.

Schema of metrics.jsonl, one JSON object per line:

    {"step": 100, "time": 1767225600.0, "kind": "train", "loss": 3.21, "lr": 0.0006, ...}

- `step`: optimizer steps for LM pretraining, environment steps for RL.
- `time`: wall-clock seconds since the epoch (time.time()) when the row was logged.
- `kind`: "train" (the default) or "eval" for evaluation rows; readers treat a row without
  `kind` (older files) as "train".
- then scalar fields (numbers, bools, strings or null); non-finite floats are written as null.

TensorBoard and W&B get the numeric fields as `kind/name` (e.g. `train/loss`, `eval/return_mean`).
W&B runs offline unless WANDB_API_KEY is set (or WANDB_MODE says otherwise), so it works with no
network; `wandb sync OUT/wandb/...` uploads later. The key itself is never read into a row or log.

This lives at the package root, beside banyan.config and banyan.io, because both the LM trainer
(banyan.train) and the RL lab (banyan.rl) use it and neither should import the other's internals.
Only the main rank builds a logger with `enabled=True`; other ranks get a no-op.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from banyan.errors import BanyanError, DataError
from banyan.io import atomic_write_text

METRICS_FILE = "metrics.jsonl"
RESERVED = ("step", "time", "kind")


class MetricsLogger:
    """Rows to OUT/metrics.jsonl plus optional TensorBoard and W&B sinks.

    `log_cfg` is a `banyan.config.LogConfig` (or anything with `tensorboard`, `wandb`,
    `wandb_project`, `wandb_run_name` attributes); `run_config` (a dataclass or dict) goes to W&B.
    `resume=True` appends to an existing metrics.jsonl instead of starting a new one.
    """

    def __init__(self, out: str | os.PathLike, log_cfg: Any, run_config: Any = None, enabled: bool = True,
                 resume: bool = False):
        self.enabled = enabled
        self.out = Path(out)
        self.path = self.out / METRICS_FILE
        self.tb = None
        self.wandb = None
        self._file = None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            _drop_partial_tail(self.path)  # a killed run's half row would glue onto the next one
        self._file = open(self.path, "a" if resume else "w", buffering=1, encoding="utf-8")  # line-buffered
        if getattr(log_cfg, "tensorboard", False):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.out / "tb"))
        if getattr(log_cfg, "wandb", False):
            self.wandb = init_wandb(self.out, log_cfg, run_config, resume)

    def log(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Write one row (`record` must hold an integer `step`; `kind` defaults to "train").

        Returns the row as written (None when disabled).
        """
        if not self.enabled:
            return None
        row = make_row(record)
        self._file.write(json.dumps(row) + "\n")
        scalars = {f"{row['kind']}/{k}": v for k, v in row.items()
                   if k not in RESERVED and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None:
            for tag, v in scalars.items():
                self.tb.add_scalar(tag, v, row["step"])
        if self.wandb is not None and scalars:
            self.wandb.log(scalars, step=row["step"])
        return row

    def text(self, tag: str, text: str, step: int) -> None:
        """A text snippet (e.g. a generated sample) to TensorBoard."""
        if self.enabled and self.tb is not None:
            self.tb.add_text(tag, text, step)

    def close(self) -> None:
        if not self.enabled or self._file is None:
            return
        self._file.close()
        self._file = None
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_row(record: dict[str, Any]) -> dict[str, Any]:
    """`record` in the schema: step, time, kind first, then fields with non-finite floats as null."""
    if "step" not in record:
        raise DataError(f"metrics row has no 'step' (keys: {sorted(record)})")
    kind = record.get("kind") or "train"
    if not isinstance(kind, str):
        raise DataError(f"metrics row 'kind' must be a string, got {kind!r}")
    step = _scalar("step", record["step"])
    if isinstance(step, bool) or not isinstance(step, (int, float)) or step != int(step):
        raise DataError(f"metrics row 'step' must be an integer, got {record['step']!r}")
    row = {"step": int(step), "time": float(record.get("time") or time.time()), "kind": kind}
    row.update({k: _scalar(k, v) for k, v in record.items() if k not in RESERVED})
    return row


def _scalar(name: str, v: Any) -> Any:
    """A JSON scalar: tensors and numpy numbers via .item(); NaN and inf become None."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()  # 0-d tensor / numpy scalar -> Python number (a larger tensor raises here)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise DataError(f"metrics field '{name}' must be a scalar (number, bool, string or None), "
                    f"got {type(v).__name__}")


def init_wandb(out: Path, log_cfg: Any, run_config: Any, resume: bool):
    """A W&B run writing under `out` (offline without WANDB_API_KEY); shared by the logger and `banyan push`."""
    import wandb

    # Offline unless the user has a key (never read beyond this check); WANDB_MODE wins if set.
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    if dataclasses.is_dataclass(run_config) and not isinstance(run_config, type):
        run_config = dataclasses.asdict(run_config)
    try:
        return wandb.init(project=getattr(log_cfg, "wandb_project", "banyan") or "banyan",
                          name=getattr(log_cfg, "wandb_run_name", "") or out.name, dir=str(out), mode=mode,
                          config=run_config or {}, resume="allow" if resume else None,
                          reinit="finish_previous")  # several runs in one process (RL compare, tests)
    except Exception as e:  # noqa: BLE001 - wandb raises its own error types (auth, network, usage)
        why = (str(e).strip().splitlines() or [""])[0][:200]
        key = os.environ.get("WANDB_API_KEY")
        if key:
            why = why.replace(key, "***")  # never echo the secret
        raise BanyanError(f"W&B could not start a {mode} run ({type(e).__name__}: {why}); check WANDB_API_KEY, "
                          "or run without --log.wandb, or set WANDB_MODE=offline") from None


def _drop_partial_tail(path: Path) -> None:
    """Cut a last line that has no newline (the half-written row of a killed run)."""
    if not path.is_file():
        return
    with open(path, "r+b") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl, each with `kind` filled in ("train" when absent).

    A last line that does not parse (a run killed mid-write, or a file read while it is being
    written) is skipped; a bad line anywhere else is a DataError naming the file and line.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise DataError(f"{path}:{i + 1}: not a JSON row ({e.msg})") from None
        if not isinstance(row, dict) or "step" not in row:
            raise DataError(f"{path}:{i + 1}: a metrics row must be a JSON object with 'step'")
        row.setdefault("kind", "train")
        rows.append(row)
    return rows


def trim_metrics(path: str | os.PathLike, upto_step: int) -> None:
    """On resume, drop rows a killed run wrote after its last checkpoint (`step > upto_step`); atomic."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [r for r in read_metrics(path) if r["step"] <= upto_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


__all__ = ["METRICS_FILE", "MetricsLogger", "make_row", "read_metrics", "trim_metrics"]
