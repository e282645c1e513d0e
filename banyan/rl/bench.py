"""`banyan bench rl`: does PPO solve CartPole-v1 within 50k environment steps, and how fast?

    banyan bench rl                       # 5 seeds x 50k steps, one run at a time
    banyan bench rl --seeds 5 --jobs 2    # two runs side by side (per-run samples/s drops accordingly)

"Solved" = the first evaluation (10 greedy episodes, every 2048 env steps; 4x less often once one
has solved it, `--eval_backoff`, which leaves steps to solve as they were) whose mean return is
>= 475, CartPole-v1's reward threshold. Prints a table (steps to solve, final return, wall time,
samples/s per seed: training only, and with the evaluation episodes) and writes OUT/bench_rl.json and
OUT/learning_curve.png (mean and min-max over seeds). Exit code 0 when at least `need` seeds solve it.
`--first_seed 11` runs held-out seeds 11..15 (the recipe was tuned on 1..5).
Reference on the same 2-core machine: CleanRL's PPO with the RL-zoo hyperparameters first averages
475 over 20 training episodes at 33k-50k steps (median 38k), at about 4.4k samples/s.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from banyan.errors import BanyanError
from banyan.config import parse_cli, to_dict
from banyan.io import atomic_write_json
from banyan.logger import read_metrics
from banyan.rl.curves import eval_curve, plot_curves
from banyan.rl.policies import NetConfig
from banyan.rl.ppo import PPOConfig


@dataclass
class BenchRLConfig:
    """Benchmark PPO on CartPole-v1 over seeds (steps to solve, samples/s)."""

    env: str = "CartPole-v1"
    """Environment id."""
    policy: str = "mlp"
    """Policy network (mlp or transformer)."""
    seeds: int = 5
    """How many seeds: first_seed .. first_seed + seeds - 1."""
    first_seed: int = 1
    """The first seed (e.g. 11 for seeds no recipe was tuned on)."""
    steps: int = 50_000
    """Environment step budget per seed."""
    need: int = 4
    """Seeds that must solve the env within the budget for the bench to pass."""
    envs: int = 8
    """Parallel environment copies per run."""
    eval_every: int = 2048
    """Evaluation interval in env steps."""
    eval_backoff: int = 4
    """Evaluate this many times less often once a seed has solved the env (1: keep eval_every)."""
    jobs: int = 1
    """Runs side by side (1 keeps samples/s comparable with a single-process baseline)."""
    out: str = "runs/rl/bench"
    """Output folder (per-seed runs, bench_rl.json)."""
    net: NetConfig = field(default_factory=NetConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)


def _cell(cfg_dict: dict) -> dict:
    from banyan.config import apply_dict
    from banyan.rl.train import RLConfig, run_training

    return run_training(apply_dict(RLConfig(), cfg_dict, "bench"))


def main(argv: list[str] | None = None) -> int:
    from banyan.rl.train import RLConfig, validate

    cfg = parse_cli(BenchRLConfig, argv, prog="banyan bench rl")
    if cfg.seeds <= 0 or cfg.steps <= 0 or cfg.jobs <= 0:
        raise BanyanError("--seeds, --steps and --jobs must be positive")
    cells = []
    for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
        rc = RLConfig(algo="ppo", env=cfg.env, policy=cfg.policy, steps=cfg.steps, seed=seed, envs=cfg.envs,
                      out=str(Path(cfg.out) / f"seed{seed}"), eval_every=cfg.eval_every,
                      eval_backoff=cfg.eval_backoff, verbose=False,
                      overwrite=True,  # the benchmark owns its per-seed folders and re-runs them
                      net=dataclasses.replace(cfg.net), ppo=dataclasses.replace(cfg.ppo))
        rc.log.tensorboard = False
        validate(rc)
        cells.append(to_dict(rc))
    print(f"bench rl: PPO/{cfg.policy} on {cfg.env}, {cfg.seeds} seeds x {cfg.steps} steps, {cfg.jobs} at a time",
          flush=True)
    t0 = time.perf_counter()
    if cfg.jobs == 1:
        runs = []
        for c in cells:
            runs.append(_cell(c))
            _print_row(runs[-1])
    else:
        with mp.get_context("spawn").Pool(cfg.jobs, maxtasksperchild=1) as pool:
            runs = sorted(pool.map(_cell, cells), key=lambda s: s["seed"])
        for s in runs:
            _print_row(s)
    solved = [s["steps_to_solve"] for s in runs if s["steps_to_solve"] is not None]
    sps = [s["samples_per_second"] for s in runs]
    threshold = runs[0]["reward_threshold"]
    result = {
        "env": cfg.env, "policy": cfg.policy, "steps": cfg.steps, "threshold": threshold,
        "solved": len(solved), "seeds": cfg.seeds, "need": cfg.need, "passed": len(solved) >= cfg.need,
        "steps_to_solve_median": float(np.median(solved)) if solved else None,
        "steps_to_solve_max": max(solved) if solved else None,
        "final_return_mean": float(np.mean([s["final_return_mean"] for s in runs])),
        "samples_per_second_mean": float(np.mean(sps)),
        "samples_per_second_with_eval_mean": float(np.mean([s["samples_per_second_with_eval"] for s in runs])),
        "wall_seconds": time.perf_counter() - t0,
        "machine": {"cpu_count": mp.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "config": dataclasses.asdict(cfg), "runs": runs,
    }
    atomic_write_json(Path(cfg.out) / "bench_rl.json", result, default=float)
    curves = [eval_curve(read_metrics(Path(cfg.out) / f"seed{s['seed']}" / "metrics.jsonl")) for s in runs]
    plot_curves({f"ppo/{cfg.policy}": curves}, Path(cfg.out) / "learning_curve.png",
                title=f"{cfg.env}: PPO, {cfg.seeds} seeds (mean, min-max)", threshold=threshold)
    med = f"{result['steps_to_solve_median']:.0f}" if solved else "—"
    print(f"\nsolved (mean eval return >= {threshold:g}) within {cfg.steps} steps on {len(solved)}/{cfg.seeds} seeds; "
          f"median steps to solve {med}; mean {result['samples_per_second_mean']:.0f} samples/s; "
          f"{'PASS' if result['passed'] else 'FAIL'} (need {cfg.need}); JSON: {Path(cfg.out) / 'bench_rl.json'}")
    return 0 if result["passed"] else 1


_header_printed = False


def _print_row(s: dict) -> None:
    global _header_printed
    if not _header_printed:
        print(f"{'seed':>4}  {'steps to solve':>14}  {'final return':>12}  {'best':>6}  {'wall s':>7}  {'samples/s':>9}  "
              f"{'with eval':>9}")
        _header_printed = True
    sts = str(s["steps_to_solve"]) if s["steps_to_solve"] is not None else "—"
    print(f"{s['seed']:>4}  {sts:>14}  {s['final_return_mean']:>12.1f}  {s['best_return_mean']:>6.1f}  "
          f"{s['wall_seconds']:>7.1f}  {s['samples_per_second']:>9.0f}  {s['samples_per_second_with_eval']:>9.0f}",
          flush=True)


if __name__ == "__main__":
    import sys

    sys.exit(main())
