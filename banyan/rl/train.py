"""`banyan rl train`: PPO or DQN on a Gymnasium environment through TorchRL.

    banyan rl train --algo ppo --env CartPole-v1 --policy mlp --steps 50000 --seed 1 --envs 8 --out runs/rl/ppo
    banyan rl train --algo dqn --env CartPole-v1 --dqn.double            # double DQN
    banyan rl train --env banyan/CartPoleNoVel-v0 --policy transformer   # partially observable CartPole

Writes OUT/config.toml, metrics.jsonl, tb/ (TensorBoard), wandb/ (with --log.wandb, offline),
checkpoints/*.safetensors, summary.json and learning_curve.png. `run_training(cfg)` is the Python API.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from banyan.errors import BanyanError
from banyan.config import LogConfig, parse_cli, write_config
from banyan.rl import dqn, ppo
from banyan.rl.dqn import DQNConfig
from banyan.rl.envs import action_kind, make_env, probe_spaces, resolve_env, seed_everything
from banyan.logger import MetricsLogger, read_metrics
from banyan.rl.curves import eval_curve, plot_curves
from banyan.rl.policies import NetConfig
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
    eval_episodes: int = 10
    """Greedy episodes per evaluation (run side by side)."""
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


def validate(cfg: RLConfig):
    """Check the config against the environment; returns (EnvInfo, obs space, action space, kind)."""
    for key in ("steps", "envs", "eval_episodes"):
        if getattr(cfg, key) <= 0:
            raise BanyanError(f"--{key} must be positive, got {getattr(cfg, key)}")
    info = resolve_env(cfg.env)
    obs_space, act_space = probe_spaces(info)
    kind = action_kind(act_space)
    if cfg.algo == "dqn" and kind != "discrete":
        raise BanyanError(f"dqn needs a discrete action space, but {cfg.env} has {act_space}; use --algo ppo")
    if cfg.policy == "transformer" and cfg.net.history < 1:
        raise BanyanError(f"--net.history must be >= 1, got {cfg.net.history}")
    return info, obs_space, act_space, kind


def run_training(cfg: RLConfig) -> dict:
    """Train one run end to end; returns the summary dict (also in OUT/summary.json)."""
    info, obs_space, _, kind = validate(cfg)
    torch.set_num_threads(max(1, cfg.threads))
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_config(cfg, out / "config.toml")
    history = cfg.net.history if cfg.policy == "transformer" else 1
    env = make_env(info, cfg.envs, cfg.seed, history, cfg.backend)
    # Evaluation uses its own envs and seeds (and always the vector backend) so it never disturbs the
    # training episodes.
    eval_env = make_env(info, cfg.eval_episodes, cfg.seed + 10_000, history)
    logger = MetricsLogger(out, cfg.log, cfg)  # the same logger and schema as LM runs; step = env steps
    obs_dim = obs_space.shape[0]
    t0 = time.perf_counter()
    try:
        if cfg.algo == "ppo":
            summary = ppo.train(cfg, env, eval_env, obs_dim, kind == "continuous", info.reward_threshold, logger)
        else:
            summary = dqn.train(cfg, env, eval_env, obs_dim, info.reward_threshold, logger)
    finally:
        logger.close()
        env.close(raise_if_closed=False)  # the collector may have closed it already
        eval_env.close(raise_if_closed=False)
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
