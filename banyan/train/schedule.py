"""Learning-rate schedules as pure functions of the step: warm-up, then cosine / WSD / constant.

A pure function (no state) means resuming needs only the step. Each returns a multiplier in
[0, 1] applied to every param group's own base lr (`group["initial_lr"]`), so optimizers with
several learning rates (Muon + AdamW) follow one schedule.
"""

from __future__ import annotations

import math

from banyan.config import OptimConfig


def lr_factor(step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based) of `max_steps`.

    warm-up: linear from 1/warmup to 1 over `warmup_steps` steps.
    cosine:  min + (1-min) * (1 + cos(pi * t)) / 2, t = progress after warm-up in [0, 1].
    wsd:     1 until the last `decay_frac` of the run, then linear down to `min_lr_ratio`
             (warmup-stable-decay, Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training
             Beyond Fixed Training Durations").
    """
    lo = cfg.min_lr_ratio
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, max_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "cosine":
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "wsd":
        decay_start = 1.0 - cfg.decay_frac
        if t < decay_start:
            return 1.0
        return 1.0 - (1.0 - lo) * (t - decay_start) / max(cfg.decay_frac, 1e-12)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def set_lr(optimizer, factor: float) -> float:
    """Scale every param group's base lr by `factor`; returns the first group's lr (for logging)."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]
