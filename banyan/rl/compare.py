"""`banyan rl compare`: an env x policy x seed grid, a results table and one plot per environment.

    banyan rl compare --envs CartPole-v1,banyan/CartPoleNoVel-v0 --policies mlp,transformer --seeds 5

Each cell is one `run_training` in its own process (spawned: TorchRL and torch threads do not survive
fork well), `jobs` at a time, each with one torch thread. Writes OUT/results.md and OUT/results.json
(final return mean ± std over seeds, seeds solved, median steps to solve, wall time, samples/s,
parameters) and OUT/<env>.png (evaluation return vs env steps, mean and min-max band over seeds).

The lesson it makes measurable: on CartPole-v1 the state is fully observed and an MLP on the current
observation is as good and much cheaper; on `banyan/CartPoleNoVel-v0` (velocities hidden) a policy
needs memory, and the transformer over the last T observations earns its cost.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from banyan.errors import BanyanError
from banyan.config import parse_cli
from banyan.io import atomic_write_json, atomic_write_text
from banyan.logger import read_metrics
from banyan.rl.curves import eval_curve, plot_curves
from banyan.rl.policies import NetConfig
from banyan.rl.ppo import PPOConfig
from banyan.rl.dqn import DQNConfig


@dataclass
class CompareConfig:
    """Run an env x policy x seed grid and tabulate the results."""

    envs: str = "CartPole-v1,banyan/CartPoleNoVel-v0"
    """Comma-separated environment ids."""
    policies: str = "mlp,transformer"
    """Comma-separated policies (mlp, transformer)."""
    seeds: int = 3
    """Seeds per (env, policy): 1..seeds."""
    algo: Literal["ppo", "dqn"] = "ppo"
    """Algorithm for every cell."""
    steps: int = 50_000
    """Environment steps per run."""
    envs_per_run: int = 8
    """Parallel environment copies inside each run."""
    eval_every: int = 2048
    """Evaluation interval in env steps."""
    eval_episodes: int = 10
    """Greedy episodes per evaluation."""
    jobs: int = 0
    """Runs in parallel (0: one per CPU core)."""
    out: str = "runs/rl/compare"
    """Output folder."""
    net: NetConfig = field(default_factory=NetConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dqn: DQNConfig = field(default_factory=DQNConfig)


def slug(env: str) -> str:
    return env.replace("/", "_").replace(":", "_")


def _run_cell(cfg_dict: dict) -> dict:
    """Child-process entry: rebuild the RLConfig and train (module-level so spawn can pickle it)."""
    from banyan.config import apply_dict
    from banyan.rl.train import RLConfig, run_training

    cfg = apply_dict(RLConfig(), cfg_dict, "compare")
    return run_training(cfg)


def grid(cfg: CompareConfig) -> list[dict]:
    """One RLConfig (as a dict) per cell."""
    from banyan.config import to_dict
    from banyan.rl.envs import resolve_env
    from banyan.rl.train import RLConfig, validate

    envs = [e.strip() for e in cfg.envs.split(",") if e.strip()]
    policies = [p.strip() for p in cfg.policies.split(",") if p.strip()]
    bad = [p for p in policies if p not in ("mlp", "transformer")]
    if bad or not policies:
        raise BanyanError(f"--policies: expected a comma-separated subset of mlp,transformer, got {cfg.policies!r}")
    if not envs or cfg.seeds <= 0:
        raise BanyanError("--envs needs at least one environment and --seeds must be positive")
    cells = []
    for env in envs:
        resolve_env(env)  # fail fast on a typo, with suggestions
        for policy in policies:
            for seed in range(1, cfg.seeds + 1):
                rc = RLConfig(algo=cfg.algo, env=env, policy=policy, steps=cfg.steps, seed=seed, envs=cfg.envs_per_run,
                              out=str(Path(cfg.out) / slug(env) / policy / f"seed{seed}"), eval_every=cfg.eval_every,
                              eval_episodes=cfg.eval_episodes, verbose=False, net=dataclasses.replace(cfg.net),
                              overwrite=True,  # the grid owns its cell folders and re-runs them
                              ppo=dataclasses.replace(cfg.ppo), dqn=dataclasses.replace(cfg.dqn))
                rc.log.plots = False
                if seed == 1:  # the env/algo/policy check does not depend on the seed
                    validate(rc)
                cells.append(to_dict(rc))
    return cells


def aggregate(summaries: list[dict]) -> list[dict]:
    """One row per (env, policy) over its seeds."""
    rows = []
    keys = sorted({(s["env"], s["policy"]) for s in summaries}, key=lambda k: (k[0], k[1]))
    for env, policy in keys:
        runs = [s for s in summaries if s["env"] == env and s["policy"] == policy]
        final = np.array([s["final_return_mean"] for s in runs])
        solved = [s["steps_to_solve"] for s in runs if s["steps_to_solve"] is not None]
        rows.append({
            "env": env, "policy": policy, "seeds": len(runs), "params": runs[0]["policy_params"],
            "final_return_mean": float(final.mean()), "final_return_std": float(final.std()),
            "best_return_mean": float(np.mean([s["best_return_mean"] for s in runs])),
            "solved": len(solved), "steps_to_solve_median": float(np.median(solved)) if solved else None,
            "wall_seconds": float(np.mean([s["wall_seconds"] for s in runs])),
            "samples_per_second": float(np.mean([s["samples_per_second"] for s in runs])),
            "threshold": runs[0]["reward_threshold"], "env_steps": runs[0]["env_steps"],
        })
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = ("| env | policy | params | final return (mean ± std) | best eval return | solved | steps to solve (median) "
            "| wall time (s) | samples/s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        sts = f"{r['steps_to_solve_median']:.0f}" if r["steps_to_solve_median"] is not None else "—"
        lines.append(f"| {r['env']} | {r['policy']} | {r['params']} | {r['final_return_mean']:.1f} ± {r['final_return_std']:.1f} "
                     f"| {r['best_return_mean']:.1f} | {r['solved']}/{r['seeds']} | {sts} | {r['wall_seconds']:.0f} "
                     f"| {r['samples_per_second']:.0f} |")
    return "\n".join(lines)


def run_grid(cfg: CompareConfig) -> list[dict]:
    """Run every cell (in `jobs` spawned processes) and write the table, JSON and plots; returns the rows."""
    cells = grid(cfg)
    jobs = cfg.jobs or os.cpu_count() or 1
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"compare: {len(cells)} runs, {min(jobs, len(cells))} at a time, outputs in {out}/", flush=True)
    summaries = []
    if jobs == 1:
        for c in cells:
            summaries.append(_run_cell(c))
            print(f"  done {c['env']} {c['policy']} seed {c['seed']}", flush=True)
    else:
        with mp.get_context("spawn").Pool(min(jobs, len(cells)), maxtasksperchild=1) as pool:
            for s in pool.imap_unordered(_run_cell, cells):
                summaries.append(s)
                print(f"  done {s['env']} {s['policy']} seed {s['seed']}: final {s['final_return_mean']:.1f}, "
                      f"{s['samples_per_second']:.0f} samples/s", flush=True)
    rows = aggregate(summaries)
    table = markdown_table(rows)
    wall = time.perf_counter() - t0
    atomic_write_text(out / "results.md", f"# banyan rl compare ({cfg.algo}, {cfg.steps} env steps, {cfg.seeds} "
                      f"seeds, {jobs} parallel jobs, {wall:.0f} s total)\n\n{table}\n")
    atomic_write_json(out / "results.json", {"config": dataclasses.asdict(cfg), "rows": rows, "runs": summaries,
                                             "wall_seconds": wall}, default=float)
    for env in dict.fromkeys(r["env"] for r in rows):
        curves = {}
        for s in sorted(summaries, key=lambda s: (s["policy"], s["seed"])):
            if s["env"] == env:
                run_dir = out / slug(env) / s["policy"] / f"seed{s['seed']}"
                curves.setdefault(s["policy"], []).append(eval_curve(read_metrics(run_dir / "metrics.jsonl")))
        plot_curves(curves, out / f"{slug(env)}.png", title=f"{env}: {cfg.algo}, {cfg.seeds} seeds",
                    threshold=rows[[r["env"] for r in rows].index(env)]["threshold"])
    print(table)
    print(f"total {wall:.0f} s; table in {out / 'results.md'}")
    return rows


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(CompareConfig, argv, prog="banyan rl compare")
    run_grid(cfg)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
