"""What every algorithm's training loop shares: evaluation episodes, checkpoints, metrics, the summary.

An algorithm (ppo.py, dqn.py) builds its networks and collector, then calls `run.after_batch(step,
metrics)` once per collected batch; `Run` decides when to evaluate (every `eval_every` env steps,
`eval_backoff` times less often once an evaluation has solved the env, and at the end), when to
checkpoint, and keeps the clock: samples/s counts training time only (collection + updates), not the
evaluation episodes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from banyan.io import atomic_path, atomic_write_json
from banyan.logger import MetricsLogger
from banyan.rl.guards import check_weights
from banyan.rl.rollout import VecEnv, evaluate_greedy


# Steps per evaluation episode when the env has no TimeLimit and --eval_max_steps is 0.
EVAL_CAP_WITHOUT_TIME_LIMIT = 10_000


@torch.no_grad()
def evaluate(env, policy, episodes: int, max_steps: int) -> tuple[np.ndarray, int]:
    """Return of the first episode of each of the env's K sub-envs (K = episodes), acting greedily, and how
    many of them were still running after `max_steps` steps (their return so far is counted).

    env: batched TorchRL env with batch size [episodes]; policy: TensorDictModule writing `action`.
    """
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    n = env.batch_size[0]
    assert n == episodes, (n, episodes)
    returns = torch.zeros(n)
    finished = torch.zeros(n, dtype=torch.bool)
    td = env.reset()
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(max_steps):
            td = policy(td)
            td, td_next = env.step_and_maybe_reset(td)
            reward = td["next", "reward"].reshape(n)
            returns += torch.where(finished, 0.0, reward)
            finished |= td["next", "done"].reshape(n)
            if finished.all():
                break
            td = td_next
    return returns.numpy(), int((~finished).sum())


class Run:
    """Evaluation schedule, checkpoints and metrics of one training run."""

    def __init__(self, cfg, out: str | Path, eval_env, eval_policy, modules: dict[str, nn.Module],
                 threshold: float | None, logger: MetricsLogger):
        self.cfg, self.out = cfg, Path(out)
        self.eval_env, self.eval_policy, self.modules = eval_env, eval_policy, modules
        self.threshold, self.logger = threshold, logger
        self.next_eval = cfg.eval_every if cfg.eval_every > 0 else cfg.steps
        self.next_ckpt = cfg.checkpoint_every if cfg.checkpoint_every > 0 else cfg.steps
        self.start = time.perf_counter()
        self.eval_time = 0.0
        self.evals: list[tuple[int, float, float]] = []  # (step, mean, std)
        self.steps_to_solve: int | None = None
        self.train_returns: list[float] = []
        self.step = 0
        self.eval_cap = cfg.eval_max_steps or EVAL_CAP_WITHOUT_TIME_LIMIT  # resolved by train.eval_cap
        self.warned_cap = False

    # ------------------------------------------------------------------ clock
    def train_seconds(self) -> float:
        return time.perf_counter() - self.start - self.eval_time

    def sps(self) -> float:
        return self.step / max(self.train_seconds(), 1e-9)

    # ------------------------------------------------------------------ per batch
    def after_batch(self, step: int, episode_returns: torch.Tensor, **metrics: float) -> bool:
        """Log a batch; evaluate/checkpoint when due. Returns True when training should stop."""
        self.step = step
        self.train_returns += episode_returns.flatten().tolist()
        recent = self.train_returns[-20:]
        self.logger.log({"step": step, "kind": "train", "episode_return": np.mean(recent) if recent else float("nan"),
                         "episodes": len(self.train_returns), "sps": self.sps(), **metrics})
        done = step >= self.cfg.steps
        if step >= self.next_eval or done:
            self.evaluate(step)
            interval = self.cfg.eval_every if self.cfg.eval_every > 0 else self.cfg.steps
            if self.steps_to_solve is not None:  # solved: the curve needs fewer points (each can be 500 steps x K)
                interval *= max(1, self.cfg.eval_backoff)
            while self.next_eval <= step:
                self.next_eval += interval
        if step >= self.next_ckpt and not done:
            self.checkpoint(step)
            while self.next_ckpt <= step:
                self.next_ckpt += self.cfg.checkpoint_every
        return self.cfg.stop_on_solve and self.steps_to_solve is not None

    def evaluate(self, step: int) -> float:
        t0 = time.perf_counter()
        if isinstance(self.eval_env, VecEnv):  # PPO's fast path: plain Gymnasium envs, the logits network
            returns, unfinished = evaluate_greedy(self.eval_env, self.eval_policy, self.eval_cap)
        else:
            returns, unfinished = evaluate(self.eval_env, self.eval_policy, self.cfg.eval_episodes, self.eval_cap)
        self.eval_time += time.perf_counter() - t0
        if unfinished and not self.warned_cap:
            self.warned_cap = True
            print(f"warning: {self.cfg.env}: {unfinished} of {self.cfg.eval_episodes} evaluation episodes were still "
                  f"running after {self.eval_cap} steps and were cut there (the env does not end its episodes "
                  "by then; --eval_max_steps sets the cap)", file=sys.stderr, flush=True)
        mean, std = float(returns.mean()), float(returns.std())
        self.evals.append((step, mean, std))
        if self.threshold is not None and self.steps_to_solve is None and mean >= self.threshold:
            self.steps_to_solve = step
        self.logger.log({"step": step, "kind": "eval", "return_mean": mean, "return_std": std,
                         "return_min": float(returns.min()), "return_max": float(returns.max())})
        if self.cfg.verbose:
            solved = f"  solved at {self.steps_to_solve}" if self.steps_to_solve is not None else ""
            print(f"step {step:>8}  eval return {mean:8.1f} ± {std:6.1f}  {self.sps():7.0f} samples/s{solved}",
                  flush=True)
        return mean

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, step: int, name: str | None = None) -> Path:
        """All networks' weights in one safetensors file (keys `module.param`), written atomically."""
        from safetensors.torch import save_file

        check_weights(self.modules, self.cfg.env, step)  # nothing non-finite is ever saved
        tensors = {f"{m}.{k}": v.detach().contiguous().clone()
                   for m, mod in self.modules.items() for k, v in mod.state_dict().items()}
        path = self.out / "checkpoints" / (name or f"step_{step:08d}.safetensors")
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"step": str(step), "algo": self.cfg.algo, "env": self.cfg.env,
                                                    "policy": self.cfg.policy})
        olds = sorted(p for p in path.parent.glob("step_*.safetensors"))
        for old in olds[:-self.cfg.keep_checkpoints] if self.cfg.keep_checkpoints > 0 else []:
            old.unlink()
        return path

    def finish(self, n_params: int) -> dict:
        """Final checkpoint and summary.json; returns the summary."""
        self.checkpoint(self.step, "final.safetensors")
        last = self.evals[-1] if self.evals else (self.step, float("nan"), float("nan"))
        summary = {
            "algo": self.cfg.algo, "env": self.cfg.env, "policy": self.cfg.policy, "seed": self.cfg.seed,
            "env_steps": self.step, "final_return_mean": last[1], "final_return_std": last[2],
            "best_return_mean": max(e[1] for e in self.evals) if self.evals else float("nan"),
            "reward_threshold": self.threshold, "steps_to_solve": self.steps_to_solve,
            "wall_seconds": time.perf_counter() - self.start, "train_seconds": self.train_seconds(),
            "samples_per_second": self.sps(), "policy_params": n_params,
            # what a user waits for: evaluation episodes and checkpoints included (start-up is not)
            "samples_per_second_with_eval": self.step / max(time.perf_counter() - self.start, 1e-9),
            "evals": [{"step": s, "return_mean": m, "return_std": sd} for s, m, sd in self.evals],
        }
        atomic_write_json(self.out / "summary.json", summary, default=float)
        return summary
