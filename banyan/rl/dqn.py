"""DQN (Mnih et al. 2015) for discrete actions, read top to bottom; double DQN (van Hasselt et al. 2016) optional.

Each iteration:
  1. collect `envs x collect_steps` transitions acting epsilon-greedily (TorchRL `EGreedyModule`; epsilon
     decays linearly from `eps_start` to `eps_end` over `explore_frac` of the run; the first
     `learning_starts` steps act uniformly at random);
  2. push them into a uniform replay buffer (`ReplayBuffer` over a `LazyTensorStorage`);
  3. take `updates_per_batch` gradient steps of TorchRL's `DQNLoss` on sampled minibatches, whose target
     is r + gamma * (1 - terminated) * max_a Q_target(s', a) (double DQN: Q_target(s', argmax_a Q(s', a)));
  4. copy the online weights into the target network every `target_every` gradient steps (`HardUpdate`).

Defaults follow the RL-zoo CartPole-v1 recipe in spirit (large learning rate, small buffer warm-up,
frequent target copies, [256, 256] network), but with one gradient step per 8 env steps instead of
RL-zoo's one per 2: on 2 CPU cores the updates, not the environment, are the bottleneck.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from banyan.logger import MetricsLogger
from banyan.rl.guards import check_loss, check_weights
from banyan.rl.loop import Run
from banyan.rl.policies import count_params, make_qnet


@dataclass
class DQNConfig:
    """DQN hyperparameters."""

    lr: float = 2.3e-3
    """Adam learning rate."""
    gamma: float = 0.99
    """Discount factor."""
    buffer_size: int = 100_000
    """Replay buffer capacity (transitions)."""
    batch_size: int = 64
    """Minibatch size of each gradient step."""
    learning_starts: int = 1024
    """Env steps of uniform random actions before learning starts."""
    collect_steps: int = 16
    """Steps per env between rounds of updates (batch = envs x collect_steps)."""
    updates_per_batch: int = 16
    """Gradient steps per collected batch."""
    target_every: int = 32
    """Copy online weights into the target network every this many gradient steps."""
    eps_start: float = 1.0
    """Initial exploration rate."""
    eps_end: float = 0.04
    """Final exploration rate."""
    explore_frac: float = 0.16
    """Fraction of the run over which epsilon decays."""
    double: bool = False
    """Double DQN: the online network picks the next action, the target network values it."""
    max_grad_norm: float = 10.0
    """Clip the global gradient norm (0 disables)."""
    hidden: int = 256
    """Hidden width of the MLP Q-network (overrides net.hidden for DQN)."""


def train(cfg, env, eval_env, obs_dim: int, threshold: float | None, logger: MetricsLogger) -> dict:
    """Train a Q-network of kind `cfg.policy` with DQN on `env`; returns the run summary."""
    import dataclasses

    from tensordict.nn import TensorDictSequential
    from torchrl.collectors import Collector
    from torchrl.data import LazyTensorStorage, ReplayBuffer
    from torchrl.modules import EGreedyModule
    from torchrl.objectives import DQNLoss, HardUpdate

    d = cfg.dqn
    spec = env.action_spec_unbatched
    qnet = make_qnet(cfg.policy, dataclasses.replace(cfg.net, hidden=d.hidden), obs_dim, spec)
    with torch.no_grad():
        qnet(env.reset())
    explore = EGreedyModule(spec, eps_init=d.eps_start, eps_end=d.eps_end,
                            annealing_num_steps=max(1, int(d.explore_frac * cfg.steps)))
    behaviour = TensorDictSequential(qnet, explore)

    loss_fn = DQNLoss(qnet, loss_function="l2", delay_value=True, double_dqn=d.double, action_space=spec)
    loss_fn.make_value_estimator(gamma=d.gamma)
    target_updater = HardUpdate(loss_fn, value_network_update_interval=d.target_every)
    optim = torch.optim.Adam(loss_fn.parameters(), lr=d.lr)
    buffer = ReplayBuffer(storage=LazyTensorStorage(d.buffer_size), batch_size=d.batch_size)

    frames_per_batch = cfg.envs * d.collect_steps
    iterations = -(-cfg.steps // frames_per_batch)
    collector = Collector(env, behaviour, frames_per_batch=frames_per_batch,
                          total_frames=iterations * frames_per_batch, init_random_frames=d.learning_starts,
                          auto_register_policy_transforms=False)
    run = Run(cfg, cfg.out, eval_env, qnet, {"qnet": qnet}, threshold, logger)

    step = 0
    for batch in collector:  # batch: [envs, collect_steps]
        step += batch.numel()
        buffer.extend(batch.reshape(-1))
        explore.step(batch.numel())
        losses = []
        if step >= d.learning_starts:
            for _ in range(d.updates_per_batch):
                loss = loss_fn(buffer.sample())["loss"]
                check_loss(loss, cfg.env, step, "DQN loss")
                optim.zero_grad(set_to_none=True)
                loss.backward()
                if d.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(loss_fn.parameters(), d.max_grad_norm)
                optim.step()
                target_updater.step()
                losses.append(float(loss.detach()))
        check_weights(run.modules, cfg.env, step)
        finished = batch["next", "episode_reward"][batch["next", "done"]]
        stop = run.after_batch(step, finished, loss=sum(losses) / len(losses) if losses else float("nan"),
                               epsilon=float(explore.eps), buffer=len(buffer))
        if stop:
            break
    collector.shutdown()
    return run.finish(count_params(qnet))
