"""Metrics sinks for a run: metrics.jsonl (always), TensorBoard, Weights & Biases; plus MFU.

Only the main rank constructs a `MetricsLogger` with `enabled=True`; other ranks get a no-op.
W&B runs offline unless WANDB_API_KEY is set (so it works with no network); `wandb sync` later
uploads the offline run.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from banyan.config import LogConfig, to_dict


class MetricsLogger:
    def __init__(self, out: Path, cfg: LogConfig, run_config: Any = None, enabled: bool = True,
                 resume: bool = False):
        self.enabled = enabled
        self.path = Path(out) / "metrics.jsonl"
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a" if resume else "w", buffering=1)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(Path(out) / "tb"))
        if cfg.wandb:
            import wandb

            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or Path(out).name,
                                    dir=str(out), mode=mode, config=to_dict(run_config) if run_config else None,
                                    resume="allow" if resume else None)

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (must contain `step`); non-finite floats are written as null."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        clean.setdefault("time", time.time())
        self._file.write(json.dumps(clean) + "\n")
        step = record["step"]
        for k, v in record.items():
            if k in ("step", "time") or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if self.tb is not None:
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in clean.items() if k != "step"}, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_text(tag, text, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


_CPU_PEAK: dict[str, float] = {}


def measured_cpu_flops(dtype: torch.dtype = torch.float32, seconds: float = 0.3) -> float:
    """Measured dense matmul FLOP/s of this CPU (all threads torch uses), cached per dtype.

    There is no datasheet peak for an arbitrary CPU, so CPU MFU is relative to what a large
    square matmul reaches here: a practical ceiling rather than the silicon's peak.
    """
    key = str(dtype)
    if key not in _CPU_PEAK:
        n = 1024
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            k += 1
        _CPU_PEAK[key] = 2 * n**3 * k / (time.perf_counter() - t0)
    return _CPU_PEAK[key]


def peak_flops_for(device: torch.device, dtype: str = "auto") -> float:
    """Peak FLOP/s for MFU: the GPU table in banyan.hardware, or a measured figure on CPU."""
    if device.type == "cuda":
        try:
            from banyan.hardware import peak_flops

            peak = peak_flops(device)
            if peak:
                return peak
        except ImportError:
            pass
        return float("nan")
    return measured_cpu_flops(torch.bfloat16 if dtype == "bf16" else torch.float32)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated memory: CUDA allocator on GPU; max RSS of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
