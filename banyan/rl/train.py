"""`banyan rl train`: PPO or DQN on a Gymnasium environment through TorchRL.

    banyan rl train --algo ppo --env CartPole-v1 --policy mlp --steps 50000 --seed 1 --envs 8 --out runs/rl/ppo
    banyan rl train --algo dqn --env CartPole-v1 --dqn.double            # double DQN
    banyan rl train --env banyan/CartPoleNoVel-v0 --policy transformer   # partially observable CartPole

Writes OUT/config.toml, metrics.jsonl, tb/ (TensorBoard), wandb/ (with --log.wandb, offline),
checkpoints/*.safetensors, summary.json and learning_curve.png. `run_training(cfg)` is the Python API.
An `--out` that already holds a run is refused unless `--overwrite`; the folder is locked while the run
lives; a NaN or infinity in observations, rewards, losses or weights stops the run naming the env and
the step (banyan.rl.guards), and no checkpoint is written from non-finite weights.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from banyan.errors import BanyanError
from banyan.config import LogConfig, parse_cli, write_config
from banyan.configlib import check_ranges
from banyan.rl import dqn, ppo
from banyan.rl.dqn import DQNConfig
from banyan.rl.guards import claim_run_dir
from banyan.rl.loop import EVAL_CAP_WITHOUT_TIME_LIMIT
from banyan.rl.envs import action_kind, make_env, probe_spaces, resolve_env, seed_everything
from banyan.logger import MetricsLogger, read_metrics
from banyan.rl.curves import eval_curve, plot_curves
from banyan.rl.policies import NetConfig
from banyan.rl.rollout import NativeVecEnv, VecEnv
from banyan.rl.ppo import PPOConfig


@dataclass
class RLConfig:
    """Train PPO or DQN on a Gymnasium environment (TorchRL collectors, losses and GAE)."""

    algo: Literal["ppo", "dqn"] = "ppo"
    """Algorithm: ppo (discrete or continuous actions) or dqn (discrete only)."""
    env: str = "CartPole-v1"
    """Gymnasium id (e.g. CartPole-v1, Acrobot-v1, Pendulum-v1, banyan/CartPoleNoVel-v0) or MODULE:Class."""
    policy: Literal["mlp", "transformer"] = "mlp"
    """Network: MLP on the current observation, or causal transformer over the last net.history observations."""
    steps: int = 50_000
    """Environment steps to train for (summed over parallel envs)."""
    seed: int = 1
    """Seed for networks, sampling and environments."""
    envs: int = 8
    """Parallel environment copies."""
    backend: Literal["vector", "serial", "parallel"] = "vector"
    """How the copies run: one gymnasium SyncVectorEnv in TorchRL's GymWrapper (fastest on 2 cores),
    TorchRL SerialEnv, or TorchRL ParallelEnv (one spawned process per copy)."""
    out: str = "runs/rl/run"
    """Output folder."""
    eval_every: int = 2048
    """Run evaluation episodes every this many env steps (0: only at the end)."""
    eval_backoff: int = 4
    """Once an evaluation has reached the env's reward threshold, evaluate every eval_backoff x eval_every
    env steps (1: keep eval_every). Steps to solve are found as before (the first evaluation at or above
    the threshold); later ones only extend the curve, and the final evaluation always runs."""
    eval_episodes: int = 10
    """Greedy episodes per evaluation (run side by side)."""
    eval_max_steps: int = 0
    """Cap on the steps of one evaluation episode, with a warning when it is hit (0: one past the env's
    time limit, or 10,000 when the env has none)."""
    overwrite: bool = False
    """Replace a previous run in `out` (removes only the files rl train writes there)."""
    stop_on_solve: bool = False
    """Stop once the mean evaluation return reaches the env's reward threshold."""
    checkpoint_every: int = 0
    """Write a checkpoint every this many env steps (0: only the final one)."""
    keep_checkpoints: int = 2
    """Keep this many periodic checkpoints."""
    threads: int = 1
    """torch threads (1 is fastest for these small networks; parallel runs share the cores)."""
    verbose: bool = True
    """Print a line per evaluation."""
    net: NetConfig = field(default_factory=NetConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dqn: DQNConfig = field(default_factory=DQNConfig)
    log: LogConfig = field(default_factory=lambda: LogConfig(wandb_project="banyan-rl", progress=False))

    # allowed values, checked when flags are parsed (banyan.configlib.check_ranges) and in validate()
    ranges = {
        "steps": (1, None), "envs": (1, None), "eval_every": (0, None), "eval_backoff": (1, None),
        "eval_episodes": (1, None),
        "eval_max_steps": (0, None), "checkpoint_every": (0, None), "keep_checkpoints": (0, None),
        "threads": (1, None), "net.history": (1, None),
        "ppo.lr": (0.0, None), "ppo.rollout_steps": (1, None), "ppo.minibatch": (1, None), "ppo.epochs": (1, None),
        "ppo.gamma": (0.0, 1.0), "ppo.gae_lambda": (0.0, 1.0), "ppo.clip": (0.0, None), "ppo.ent_coef": (0.0, None),
        "ppo.vf_coef": (0.0, None), "ppo.max_grad_norm": (0.0, None),
        "dqn.lr": (0.0, None), "dqn.gamma": (0.0, 1.0), "dqn.buffer_size": (1, None), "dqn.batch_size": (1, None),
        "dqn.learning_starts": (0, None), "dqn.collect_steps": (1, None), "dqn.updates_per_batch": (1, None),
        "dqn.target_every": (1, None), "dqn.eps_start": (0.0, 1.0), "dqn.eps_end": (0.0, 1.0),
        "dqn.explore_frac": (0.0, 1.0), "dqn.max_grad_norm": (0.0, None), "dqn.hidden": (1, None),
    }


def validate(cfg: RLConfig):
    """Check the config against the environment; returns (EnvInfo, obs space, action space, kind)."""
    check_ranges(cfg, cfg.ranges)  # the Python API too, not only the CLI
    info = resolve_env(cfg.env)
    obs_space, act_space = probe_spaces(info)
    kind = action_kind(act_space)
    if cfg.algo == "dqn" and kind != "discrete":
        raise BanyanError(f"dqn needs a discrete action space, but {cfg.env} has {act_space}; use --algo ppo")
    return info, obs_space, act_space, kind


def run_training(cfg: RLConfig) -> dict:
    """Train one run end to end; returns the summary dict (also in OUT/summary.json)."""
    info, obs_space, _, kind = validate(cfg)
    out = Path(cfg.out)
    lock = claim_run_dir(out, cfg.overwrite)  # held for the life of the run
    try:
        return _train(cfg, info, obs_space, kind, out)
    finally:
        lock.release()


def eval_cap(cfg: RLConfig, info) -> int:
    """Steps per evaluation episode: the flag, else one past the env's time limit, else a fixed cap."""
    if cfg.eval_max_steps:
        return cfg.eval_max_steps
    return info.max_episode_steps + 1 if info.max_episode_steps else EVAL_CAP_WITHOUT_TIME_LIMIT


def _train(cfg: RLConfig, info, obs_space, kind: str, out: Path) -> dict:
    torch.set_num_threads(max(1, cfg.threads))
    seed_everything(cfg.seed)
    write_config(cfg, out / "config.toml")
    history = cfg.net.history if cfg.policy == "transformer" else 1
    # Evaluation uses its own envs and seeds so it never disturbs the training episodes.
    if cfg.algo == "ppo" and kind == "discrete" and cfg.backend == "vector":
        # PPO's fast path: plain Gymnasium envs, one TensorDict per batch (banyan.rl.rollout)
        env = (NativeVecEnv(info, cfg.envs, cfg.seed, role="training") if NativeVecEnv.available(info, history, True)
               else VecEnv(info, cfg.envs, cfg.seed, history))
        eval_env = (NativeVecEnv(info, cfg.eval_episodes, cfg.seed + 10_000) if NativeVecEnv.available(info, history)
                    else VecEnv(info, cfg.eval_episodes, cfg.seed + 10_000, history, role="evaluation"))
    else:
        env = make_env(info, cfg.envs, cfg.seed, history, cfg.backend)
        eval_env = make_env(info, cfg.eval_episodes, cfg.seed + 10_000, history, role="evaluation")
    algo_cfg = dataclasses.replace(cfg, eval_max_steps=eval_cap(cfg, info))
    logger = MetricsLogger(out, cfg.log, cfg)  # the same logger and schema as LM runs; step = env steps
    obs_dim = obs_space.shape[0]
    t0 = time.perf_counter()
    try:
        if cfg.algo == "ppo":
            summary = ppo.train(algo_cfg, env, eval_env, obs_dim, kind == "continuous", info.reward_threshold, logger)
        else:
            summary = dqn.train(algo_cfg, env, eval_env, obs_dim, info.reward_threshold, logger)
    finally:
        logger.close()
        for e in (env, eval_env):
            e.close() if isinstance(e, VecEnv) else e.close(raise_if_closed=False)  # a collector may have closed it
    if cfg.log.plots:
        steps, rets = eval_curve(read_metrics(out / "metrics.jsonl"))
        plot_curves({f"{cfg.algo}/{cfg.policy} seed {cfg.seed}": [(steps, rets)]}, out / "learning_curve.png",
                    title=f"{cfg.env}", threshold=info.reward_threshold)
    if cfg.verbose:
        solved = summary["steps_to_solve"]
        print(f"done: {summary['env_steps']} steps in {time.perf_counter() - t0:.1f}s, "
              f"{summary['samples_per_second']:.0f} samples/s, final eval return {summary['final_return_mean']:.1f}"
              + (f", solved at {solved} steps" if solved is not None else "") + f"; outputs in {out}/")
    return summary


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(RLConfig, argv, prog="banyan rl train")
    run_training(cfg)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
