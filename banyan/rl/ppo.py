"""PPO (Schulman et al. 2017, arXiv:1707.06347) with GAE, read top to bottom.

Each iteration:
  1. collect `envs x rollout_steps` transitions with the current stochastic policy, under torch.no_grad:
     banyan.rl.rollout for discrete actions on the vector backend (plain Gymnasium envs, one TensorDict
     per batch), else TorchRL's `Collector`;
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
from banyan.runtime import frozen_gc
from banyan.rl.flat import FlatParams
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
    """TorchRL's ClipPPOLoss (as banyan.rl.clip_loss.ClipPPO, whose `train_terms` skips the diagnostics)."""
    from banyan.rl.clip_loss import ClipPPO

    return ClipPPO(actor, critic, clip_epsilon=cfg.clip, entropy_bonus=cfg.ent_coef > 0,
                   entropy_coeff=cfg.ent_coef if cfg.ent_coef > 0 else None, critic_coeff=cfg.vf_coef,
                   loss_critic_type="l2", normalize_advantage=cfg.norm_adv,
                   log_explained_variance=False,  # not logged; saves a few ops per gradient step
                   functional=False)  # no parameter copies: the actor is the live policy


_STATS = (("loss_objective", "loss_objective"), ("loss_critic", "loss_critic"), ("loss_entropy", "loss_entropy"),
          ("entropy", "entropy"), ("kl", "kl_approx"))


def _loss_inputs(loss_fn, data):
    """`data` [N] reduced to the entries ClipPPOLoss reads when advantages are given: the actor's and the
    critic's inputs, action, its log-prob, advantage and value target. Its forward starts with a
    (shallow) clone of the whole tensordict; a Collector-layout batch has ~14 entries, this ~5."""
    k = loss_fn.tensor_keys
    keys = {*loss_fn.actor_network.in_keys, *loss_fn.critic_network.in_keys, k.action, k.sample_log_prob,
            k.advantage, k.value_target}
    return data.select(*(key for key in keys if key in data.keys(True)))


def update(cfg, loss_fn, optim, flat, data, step: int) -> dict[str, float]:
    """`epochs` passes of ClipPPOLoss over `data` [N] in shuffled minibatches; returns the mean stats.

    When one minibatch holds the whole batch (the CartPole recipe: 256 of 256) the shuffle is skipped:
    every term of the loss is a mean over the minibatch, so the order changes nothing; and the
    advantages are normalised once, with the loss's own rule, instead of identically on every one of
    the `epochs` steps. Stats stay tensors until the end (one conversion per batch, not per step).
    `flat` (banyan.rl.flat.FlatParams) holds every parameter and gradient; `optim` steps `flat.param`."""
    p = cfg.ppo
    stats: dict[str, list] = {k: [] for k, _ in _STATS}
    data = _loss_inputs(loss_fn, data)
    whole = p.minibatch >= data.numel()
    normalize = loss_fn.normalize_advantage
    if whole and normalize and data.numel() > 1:
        adv_key = loss_fn.tensor_keys.advantage
        data.set(adv_key, loss_fn._standardize_advantage(data.get(adv_key), data))
        loss_fn.normalize_advantage = False
    try:
        for _ in range(p.epochs):
            parts = [data] if whole else [data[i] for i in torch.randperm(data.numel()).split(p.minibatch)]
            for mb in parts:
                out = loss_fn.train_terms(mb)
                loss = out["loss_objective"] + out["loss_critic"]
                if "loss_entropy" in out:
                    loss = loss + out["loss_entropy"]
                check_loss(loss, cfg.env, step, "PPO loss")
                flat.zero_grad()
                loss.backward()
                if p.max_grad_norm > 0:
                    flat.clip_grad_norm_(p.max_grad_norm)
                optim.step()
                for k, key in _STATS:
                    if key in out:
                        stats[k].append(out[key].detach())
    finally:
        loss_fn.normalize_advantage = normalize
    return {k: float(torch.stack(v).mean()) if v else 0.0 for k, v in stats.items()}


def _collector_batches(env, actor, frames_per_batch: int, iterations: int):
    """TorchRL Collector over a TorchRL env (serial/parallel backends, continuous actions)."""
    from torchrl.collectors import Collector

    collector = Collector(env, actor, frames_per_batch=frames_per_batch, total_frames=iterations * frames_per_batch,
                          auto_register_policy_transforms=False)
    try:
        for batch in collector:  # [envs, rollout_steps]
            yield batch, batch["next", "episode_reward"][batch["next", "done"]]
    finally:
        collector.shutdown()


def _fast_batches(env, logits_net, n_actions: int, steps: int, iterations: int):
    """banyan.rl.rollout over plain Gymnasium envs (discrete actions, the vector backend)."""
    from banyan.rl.rollout import Rollout

    rollout = Rollout(env, logits_net, n_actions)
    for _ in range(iterations):
        batch, finished = rollout.collect(steps)
        yield batch, torch.tensor(finished)


def _build(cfg, env, obs_dim: int, continuous: bool):
    """(actor, critic, batches factory, evaluation policy) for a VecEnv (fast path) or a TorchRL env."""
    from banyan.rl.rollout import VecEnv

    if isinstance(env, VecEnv):
        from tensordict import TensorDict
        from torchrl.data import OneHot

        actor, critic = make_actor_critic(cfg.policy, cfg.net, obs_dim, OneHot(env.n_actions, dtype=torch.int64),
                                          continuous)
        first = TensorDict(observation=env.obs(), batch_size=[env.k])
        logits_net = actor.module[0].module  # ProbabilisticActor = [TensorDictModule(net -> logits), sampler]
        batches = lambda fpb, its: _fast_batches(env, logits_net, env.n_actions, cfg.ppo.rollout_steps, its)  # noqa: E731
        eval_policy = logits_net
    else:
        actor, critic = make_actor_critic(cfg.policy, cfg.net, obs_dim, env.action_spec_unbatched, continuous)
        first = env.reset()
        batches = lambda fpb, its: _collector_batches(env, actor, fpb, its)  # noqa: E731
        eval_policy = actor
    # One forward on a reset batch materialises lazy specs/parameters before the optimizer sees them.
    with torch.no_grad():
        critic(actor(first))
    return actor, critic, batches, eval_policy


def train(cfg, env, eval_env, obs_dim: int, continuous: bool, threshold: float | None,
          logger: MetricsLogger) -> dict:
    """Train `cfg.policy` with PPO on `env` for `cfg.steps` env steps; returns the run summary."""
    p = cfg.ppo
    actor, critic, batches, eval_policy = _build(cfg, env, obs_dim, continuous)
    gae = make_gae(p, critic)
    loss_fn = make_loss(p, actor, critic)
    # all parameters in one buffer (banyan.rl.flat) and fused Adam on it: one kernel per step for the
    # optimizer, one for zeroing, two for the gradient clipping, whatever the number of tensors
    flat = FlatParams(loss_fn.parameters())
    optim = torch.optim.Adam([flat.param], lr=p.lr, eps=1e-5, fused=True)

    frames_per_batch = cfg.envs * p.rollout_steps
    iterations = -(-cfg.steps // frames_per_batch)
    run = Run(cfg, cfg.out, eval_env, eval_policy, {"actor": actor, "critic": critic}, threshold, logger)
    stream = batches(frames_per_batch, iterations)
    # torch.distributions' argument checks re-validate the logits and every action on each of the ~4k
    # loss calls (~8 tensor ops each, ~3% of a gradient step); a non-finite value is still caught, by
    # check_loss before the update. The process-wide default is restored afterwards.
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        with frozen_gc():  # the networks, envs and imports out of the cycle collector's walks (banyan.runtime)
            _iterate(cfg, stream, iterations, frames_per_batch, gae, loss_fn, optim, flat, run)
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
        stream.close()  # shuts a TorchRL collector down even when training stopped early
    return run.finish(count_params(actor))


def _iterate(cfg, stream, iterations: int, frames_per_batch: int, gae, loss_fn, optim, flat, run) -> None:
    p = cfg.ppo
    for it, (batch, finished) in enumerate(stream):  # batch: [envs, rollout_steps]
        frac = 1.0 - it / iterations  # linear annealing factor, 1 -> 1/iterations
        if p.anneal_lr:
            for group in optim.param_groups:
                group["lr"] = p.lr * frac
        if p.anneal_clip:
            loss_fn.clip_epsilon.fill_(p.clip * frac)
        with torch.no_grad():
            gae(batch)  # adds advantage, value_target, state_value
        step = (it + 1) * frames_per_batch
        stats = update(cfg, loss_fn, optim, flat, batch.reshape(-1), step)
        check_weights(run.modules, cfg.env, step, flat.param)
        if run.after_batch(step, finished, lr=optim.param_groups[0]["lr"], **stats):
            break
