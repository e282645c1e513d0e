"""PPO (Schulman et al. 2017, arXiv:1707.06347) with GAE, read top to bottom.

Each iteration:
  1. collect `envs x rollout_steps` transitions with the current stochastic policy (TorchRL `Collector`,
     which runs the policy under torch.no_grad);
  2. compute advantages and value targets with TorchRL's `GAE` (Schulman et al. 2016, arXiv:1506.02438):
       delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)
       A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}
     so a time-limit truncation still bootstraps from V(s_{t+1}) while a true termination does not;
  3. `epochs` passes over the batch in shuffled minibatches of TorchRL's `ClipPPOLoss`: the clipped
     surrogate on per-minibatch normalised advantages, a value loss (weight `vf_coef`) and an optional
     entropy bonus (weight `ent_coef`), with gradient-norm clipping;
  4. anneal the learning rate (and the clip range) linearly to zero, as the RL-zoo CartPole recipe does.

Defaults are the RL-zoo hyperparameters for CartPole-v1 (8 envs x 32 steps, 20 epochs of 256-sample
minibatches, gamma 0.98, lambda 0.8, lr 1e-3 and clip 0.2 both annealed, no entropy bonus).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from banyan.logger import MetricsLogger
from banyan.rl.guards import check_loss, check_weights
from banyan.rl.loop import Run
from banyan.rl.policies import count_params, make_actor_critic


@dataclass
class PPOConfig:
    """PPO hyperparameters."""

    lr: float = 1e-3
    """Adam learning rate (peak, when annealed)."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    rollout_steps: int = 32
    """Steps per env per iteration (batch = envs x rollout_steps)."""
    minibatch: int = 256
    """Minibatch size of each gradient step."""
    epochs: int = 20
    """Passes over each batch."""
    gamma: float = 0.98
    """Discount factor."""
    gae_lambda: float = 0.8
    """GAE lambda."""
    clip: float = 0.2
    """Clip range of the probability ratio."""
    anneal_clip: bool = True
    """Decay the clip range linearly to 0 over the run."""
    ent_coef: float = 0.0
    """Entropy bonus weight (0 disables)."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm (0 disables)."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""


def make_gae(cfg: PPOConfig, critic):
    """TorchRL GAE writing `advantage` and `value_target` [..., T, 1] from a [..., T] trajectory batch."""
    from torchrl.objectives.value import GAE

    # deactivate_vmap: plain batched calls; vmap has no batching rule for CPU flash attention.
    return GAE(gamma=cfg.gamma, lmbda=cfg.gae_lambda, value_network=critic, average_gae=False,
               deactivate_vmap=True)


def make_loss(cfg: PPOConfig, actor, critic):
    from torchrl.objectives import ClipPPOLoss

    return ClipPPOLoss(actor, critic, clip_epsilon=cfg.clip, entropy_bonus=cfg.ent_coef > 0,
                       entropy_coeff=cfg.ent_coef if cfg.ent_coef > 0 else None, critic_coeff=cfg.vf_coef,
                       loss_critic_type="l2", normalize_advantage=cfg.norm_adv,
                       functional=False)  # no parameter copies: the actor is the live policy


def train(cfg, env, eval_env, obs_dim: int, continuous: bool, threshold: float | None,
          logger: MetricsLogger) -> dict:
    """Train `cfg.policy` with PPO on `env` for `cfg.steps` env steps; returns the run summary."""
    from torchrl.collectors import Collector

    p = cfg.ppo
    actor, critic = make_actor_critic(cfg.policy, cfg.net, obs_dim, env.action_spec_unbatched, continuous)
    # One forward on a reset batch materialises lazy specs/parameters before the optimizer sees them.
    with torch.no_grad():
        critic(actor(env.reset()))
    gae = make_gae(p, critic)
    loss_fn = make_loss(p, actor, critic)
    optim = torch.optim.Adam(loss_fn.parameters(), lr=p.lr, eps=1e-5)

    frames_per_batch = cfg.envs * p.rollout_steps
    iterations = -(-cfg.steps // frames_per_batch)
    collector = Collector(env, actor, frames_per_batch=frames_per_batch, total_frames=iterations * frames_per_batch,
                          auto_register_policy_transforms=False)
    run = Run(cfg, cfg.out, eval_env, actor, {"actor": actor, "critic": critic}, threshold, logger)

    for it, batch in enumerate(collector):  # batch: [envs, rollout_steps]
        frac = 1.0 - it / iterations  # linear annealing factor, 1 -> 1/iterations
        if p.anneal_lr:
            for group in optim.param_groups:
                group["lr"] = p.lr * frac
        if p.anneal_clip:
            loss_fn.clip_epsilon.fill_(p.clip * frac)
        with torch.no_grad():
            gae(batch)  # adds advantage, value_target, state_value
        data = batch.reshape(-1)
        stats = {"loss_objective": 0.0, "loss_critic": 0.0, "loss_entropy": 0.0, "entropy": 0.0, "kl": 0.0}
        n_updates = 0
        for _ in range(p.epochs):
            for idx in torch.randperm(data.numel()).split(p.minibatch):
                out = loss_fn(data[idx])
                loss = out["loss_objective"] + out["loss_critic"] + out.get("loss_entropy", torch.zeros(()))
                check_loss(loss, cfg.env, (it + 1) * frames_per_batch, "PPO loss")
                optim.zero_grad(set_to_none=True)
                loss.backward()
                if p.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(loss_fn.parameters(), p.max_grad_norm)
                optim.step()
                n_updates += 1
                for k, key in (("loss_objective", "loss_objective"), ("loss_critic", "loss_critic"),
                               ("loss_entropy", "loss_entropy"), ("entropy", "entropy"), ("kl", "kl_approx")):
                    if key in out.keys():
                        stats[k] += float(out[key].detach())
        step = (it + 1) * frames_per_batch
        check_weights(run.modules, cfg.env, step)
        finished = batch["next", "episode_reward"][batch["next", "done"]]
        stop = run.after_batch(step, finished, lr=optim.param_groups[0]["lr"],
                               **{k: v / max(n_updates, 1) for k, v in stats.items()})
        if stop:
            break
    collector.shutdown()
    return run.finish(count_params(actor))
