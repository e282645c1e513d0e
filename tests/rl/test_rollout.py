"""PPO's fast collection path (banyan.rl.rollout) against TorchRL's Collector batch and the env's own semantics."""

import numpy as np
import torch

from banyan.rl.envs import make_env, resolve_env
from banyan.rl.policies import NetConfig, make_actor_critic
from banyan.rl.ppo import PPOConfig, make_gae, make_loss
from banyan.rl.rollout import Rollout, VecEnv, evaluate_greedy


def _nets(obs_dim=4, n=2, kind="mlp", history=8):
    from torchrl.data import OneHot

    torch.manual_seed(0)
    return make_actor_critic(kind, NetConfig(history=history), obs_dim, OneHot(n, dtype=torch.int64), False)


def test_batch_has_the_collector_layout_and_counts_every_env_step():
    from torchrl.collectors import Collector

    info = resolve_env("CartPole-v1")
    actor, critic = _nets()
    venv = VecEnv(info, 3, seed=0)
    batch, finished = Rollout(venv, actor.module[0].module, 2).collect(40)
    assert batch.batch_size == torch.Size([3, 40]) and venv.steps == 3 * 40
    ref_env = make_env(info, 3, 0)
    ref = next(iter(Collector(ref_env, actor, frames_per_batch=120, total_frames=120,
                          auto_register_policy_transforms=False)))
    for key in ("observation", "action", "action_log_prob", ("next", "observation"), ("next", "reward"),
                ("next", "done"), ("next", "terminated"), ("next", "truncated")):
        assert batch[key].shape == ref[key].shape and batch[key].dtype == ref[key].dtype, key
    # 40 random-ish CartPole steps end some episodes: each end is in `finished`, with its length as return
    ends = batch["next", "done"].squeeze(-1)
    assert ends.sum() == len(finished) > 0
    # the stored log-prob is the actor's own log-prob of the stored action
    with torch.no_grad():
        dist = actor.get_dist(batch.select("observation").clone())
        assert torch.allclose(dist.log_prob(batch["action"]), batch["action_log_prob"], atol=1e-5)
    # GAE and ClipPPOLoss consume it as they consume a Collector batch
    p = PPOConfig()
    with torch.no_grad():
        make_gae(p, critic)(batch)
    out = make_loss(p, actor, critic)(batch.reshape(-1))
    assert torch.isfinite(out["loss_objective"]) and torch.isfinite(out["loss_critic"])


def test_final_observation_is_kept_and_the_next_step_starts_a_fresh_episode():
    info = resolve_env("CartPole-v1")
    venv = VecEnv(info, 2, seed=1)
    always_right = np.ones(2, dtype=np.int64)  # falls over within ~10 steps, never truncated
    for _ in range(200):
        before = venv.obs()
        nxt, r, term, trunc = venv.step(always_right)
        assert np.all(r == 1.0) and not trunc.any()
        if term[0]:
            break
    assert term[0]
    assert abs(nxt[0, 2]) > 0.2  # the pole angle past CartPole's 12-degree limit: the true last state
    assert abs(venv.obs()[0, 2]) < 0.05 and not torch.equal(venv.obs()[0], before[0])  # reset state


def test_history_window_repeats_the_first_frame_at_an_episode_start():
    info = resolve_env("banyan/CartPoleNoVel-v0")
    venv = VecEnv(info, 2, seed=3, history=4)
    w = venv.obs()
    assert w.shape == (2, 4, 2) and torch.equal(w[:, 0], w[:, 3])
    nxt, *_ = venv.step(np.zeros(2, dtype=np.int64))
    assert torch.equal(torch.from_numpy(nxt[:, :3]), w[:, 1:])  # shifted by one, newest last


def test_greedy_evaluation_stops_each_copy_at_its_own_end():
    info = resolve_env("CartPole-v1")
    venv = VecEnv(info, 4, seed=5, role="evaluation")

    class Right(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 1.0]]).expand(x.shape[0], 2)

    returns, unfinished = evaluate_greedy(venv, Right(), max_steps=501)
    assert unfinished == 0 and np.all((returns > 5) & (returns < 30))  # always-right falls fast
    returns, unfinished = evaluate_greedy(venv, Right(), max_steps=3)
    assert unfinished == 4 and np.all(returns == 3)


class _Balance(torch.nn.Module):
    """A hand-made CartPole controller (push toward the side the pole falls to): logits [K, 2]."""

    def forward(self, x):
        s = x[..., 2] + 0.5 * x[..., 3] + 0.01 * x[..., 0] + 0.1 * x[..., 1]
        return torch.stack([-s, s], -1)


def test_native_vector_evaluation_matches_the_per_env_loop():
    from banyan.rl.rollout import NativeVecEnv

    info = resolve_env("CartPole-v1")
    assert NativeVecEnv.available(info, 1) and not NativeVecEnv.available(info, 8)
    assert not NativeVecEnv.available(resolve_env("banyan/CartPoleNoVel-v0"), 1)
    for env in (VecEnv(info, 3, seed=7, role="evaluation"), NativeVecEnv(info, 3, seed=7)):
        returns, unfinished = evaluate_greedy(env, _Balance(), max_steps=501)
        assert unfinished == 0 and np.all(returns == 500.0), (type(env).__name__, returns)  # the 500-step limit
        env.close()


def test_native_training_env_keeps_the_last_observation_and_resets_within_the_step():
    from banyan.rl.rollout import NativeVecEnv

    info = resolve_env("CartPole-v1")
    assert NativeVecEnv.available(info, 1, training=True)
    venv = NativeVecEnv(info, 3, seed=1, role="training")
    right = np.ones(3, dtype=np.int64)  # falls over within ~10 steps, never truncated
    ended = np.zeros(3, bool)
    for _ in range(60):
        nxt, r, term, trunc = venv.step(right)
        assert np.all(r == 1.0) and not trunc.any()  # never the next-step auto-reset's reward-0 non-step
        if term.any():
            assert np.all(np.abs(nxt[term, 2]) > 0.2)  # the true last state: pole past the 12-degree limit
            assert np.all(np.abs(venv.current()[term]) <= 0.05)  # the fresh episode, before the next step
            ended |= term
    assert ended.all() and venv.steps == 3 * 60
    # a balancing controller is truncated at CartPole-v1's 500 steps: the step counters were reset too
    lengths, t = np.zeros(3), np.zeros(3)
    for _ in range(1100):
        _, r, term, trunc = venv.step(_Balance()(torch.from_numpy(venv.current())).argmax(-1).numpy())
        t += 1
        assert not term.any()
        lengths[trunc], t[trunc] = t[trunc], 0
    assert np.all(lengths == 500)
    venv.close()


def test_rollout_on_the_native_env_fills_a_collector_layout_batch():
    from banyan.rl.rollout import NativeVecEnv

    actor, _ = _nets()
    venv = NativeVecEnv(resolve_env("CartPole-v1"), 4, seed=2, role="training")
    torch.manual_seed(3)
    batch, finished = Rollout(venv, actor.module[0].module, 2).collect(50)
    assert batch.batch_size == torch.Size([4, 50]) and venv.steps == 200
    assert batch["next", "done"].sum() == len(finished) > 0
    # next observation of step t is the observation of step t + 1 except where an episode ended
    same = (batch["next", "observation"][:, :-1] == batch["observation"][:, 1:]).all(-1)
    assert torch.equal(same, ~batch["next", "done"][:, :-1].squeeze(-1))
    with torch.no_grad():
        dist = actor.get_dist(batch.select("observation").clone())
        torch.testing.assert_close(dist.log_prob(batch["action"]), batch["action_log_prob"])
    torch.manual_seed(3)
    again, _ = Rollout(NativeVecEnv(resolve_env("CartPole-v1"), 4, seed=2, role="training"),
                       actor.module[0].module, 2).collect(50)
    assert torch.equal(again["action"], batch["action"])  # deterministic per seed
