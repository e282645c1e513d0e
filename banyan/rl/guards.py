"""What keeps an RL run honest: one folder per run, finite numbers only, nothing non-finite on disk.

- `claim_run_dir(cfg)`: refuses an `--out` that already holds a run (unless `--overwrite`, which removes
  only the files `rl train` writes) and locks the folder for the life of the process (banyan.io.FolderLock).
- `FiniteGuard`: a TorchRL transform on every env that stops at the first non-finite observation or reward,
  naming the env, the env step and the sub-env, before a policy ever sees it.
- `check_loss` / `check_weights`: the same for losses (before backward) and network weights (after each
  update, and before any checkpoint is written).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
from torchrl.envs import Transform

from banyan.errors import BanyanError
from banyan.io import FolderLock


class NonFiniteError(BanyanError):
    """A NaN or infinity in an RL run's observations, rewards, losses or weights."""


# what `rl train` writes into OUT (see banyan.rl.train's docstring); --overwrite removes these and nothing else
RUN_FILES = ("config.toml", "metrics.jsonl", "summary.json", "learning_curve.png")
RUN_DIRS = ("checkpoints", "tb", "wandb")


def claim_run_dir(out: Path, overwrite: bool) -> FolderLock:
    """Lock `out` (created if needed) for this process; refuse a previous run unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise BanyanError(f"--out '{out}' is a file, not a folder")
    lock = FolderLock(out, "run folder").acquire()
    found = [n for n in RUN_FILES + RUN_DIRS if (out / n).exists()]
    if found and not overwrite:
        lock.release()
        raise BanyanError(f"output folder '{out}' already holds a run ({', '.join(found)}); pass --overwrite "
                          "to replace it or choose another --out")
    for name in found:  # only banyan's own outputs: a user's notes in the folder stay
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return lock


def _first_bad(t: torch.Tensor) -> int | None:
    """Index (along dim 0, the sub-env) of the first row holding a non-finite value, or None."""
    if not t.is_floating_point():
        return None
    bad = ~torch.isfinite(t.reshape(t.shape[0], -1) if t.dim() else t.reshape(1, 1))
    rows = bad.any(dim=-1).nonzero()
    return int(rows[0]) if len(rows) else None


def non_finite_error(env_name: str, key: str, when: str, role: str, steps: int, row: int, num_envs: int):
    """The one message for a non-finite env output (FiniteGuard and banyan.rl.rollout.VecEnv raise it)."""
    return NonFiniteError(f"{env_name}: non-finite {key} {when} at {role} env step {steps} "
                          f"(sub-env {row} of {num_envs}); nothing was trained on it")


class FiniteGuard(Transform):
    """Raise NonFiniteError on a non-finite observation (reset or step) or reward; counts env steps.

    Sits first in the env's transforms, so it sees the env's own output [K, ...] before any policy does.
    `steps` is the running count of env steps over all K copies (the run's step counter)."""

    def __init__(self, env_name: str, num_envs: int, role: str = "training"):
        super().__init__(in_keys=[])
        self.env_name, self.num_envs, self.role, self.steps = env_name, num_envs, role, 0

    def _check(self, td, when: str) -> None:
        for key in ("observation", "reward"):
            if key in td.keys():
                row = _first_bad(td[key])
                if row is not None:
                    raise non_finite_error(self.env_name, key, when, self.role, self.steps, row, self.num_envs)

    def _call(self, next_tensordict):
        self.steps += self.num_envs
        self._check(next_tensordict, "after a step")
        return next_tensordict

    def _reset(self, tensordict, tensordict_reset):
        self._check(tensordict_reset, "on reset")
        return tensordict_reset

    forward = _call


def check_loss(loss: torch.Tensor, env_name: str, step: int, what: str = "loss") -> None:
    # a scalar loss: one read of its value (isfinite + all + bool is three dispatches, ~4k times a run)
    finite = math.isfinite(loss.item()) if loss.numel() == 1 else bool(torch.isfinite(loss).all())
    if not finite:
        raise NonFiniteError(f"{env_name}: non-finite {what} ({float(loss.detach().flatten()[0])}) at env step "
                             f"{step}; stopped before the update")


def check_weights(modules: dict[str, torch.nn.Module], env_name: str, step: int,
                  flat: torch.Tensor | None = None) -> None:
    """Every parameter and buffer finite, else NonFiniteError naming the first bad tensor.

    `flat`: one tensor holding every parameter (banyan.rl.flat.FlatParams.param); when it is finite and
    the modules have no floating-point buffers, one check of it stands for the walk over the state dicts."""
    if flat is not None and bool(torch.isfinite(flat).all()) and not any(
            b.is_floating_point() for mod in modules.values() for b in mod.buffers()):
        return
    for m, mod in modules.items():
        for k, v in mod.state_dict().items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise NonFiniteError(f"{env_name}: weights {m}.{k} became non-finite at env step {step}; "
                                     "no checkpoint was written from them")
