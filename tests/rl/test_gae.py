"""GAE as configured by banyan's PPO, checked against a hand-computed example."""

import torch
import torch.nn as nn
from tensordict import TensorDict
from torchrl.modules import ValueOperator

from banyan.rl.ppo import PPOConfig, make_gae


def test_gae_matches_hand_computation():
    # One env, 4 steps; the critic is V(s) = s so every value is visible in the data.
    # Step 2 terminates (no bootstrap, trace cut); step 3 is truncated by a time limit
    # (bootstrap from V(s'_3) = 5, trace cut). gamma = 0.9, lambda = 0.8.
    obs = torch.tensor([1.0, 2.0, 3.0, 4.0])
    next_obs = torch.tensor([2.0, 3.0, 10.0, 5.0])  # 10 is behind a termination: must be ignored
    reward = torch.tensor([1.0, 0.0, 2.0, 1.0])
    terminated = torch.tensor([False, False, True, False])
    truncated = torch.tensor([False, False, False, True])
    col = lambda x: x.view(1, 4, 1)  # noqa: E731  [envs=1, T=4, 1]
    td = TensorDict({
        "observation": col(obs),
        "next": {"observation": col(next_obs), "reward": col(reward), "terminated": col(terminated),
                 "truncated": col(truncated), "done": col(terminated | truncated)},
    }, batch_size=[1, 4])
    critic = ValueOperator(nn.Identity(), in_keys=["observation"])
    make_gae(PPOConfig(gamma=0.9, gae_lambda=0.8), critic)(td)

    # delta_t = r_t + g V(s'_t)(1 - term_t) - V(s_t);  A_t = delta_t + g l (1 - done_t) A_{t+1}
    # d3 = 1 + .9*5 - 4 = 1.5            A3 = 1.5
    # d2 = 2 + 0 - 3 = -1                A2 = -1              (done: trace cut)
    # d1 = 0 + .9*3 - 2 = 0.7            A1 = 0.7 + .72*(-1) = -0.02
    # d0 = 1 + .9*2 - 1 = 1.8            A0 = 1.8 + .72*(-0.02) = 1.7856
    expected_adv = torch.tensor([1.7856, -0.02, -1.0, 1.5])
    torch.testing.assert_close(td["advantage"].view(4), expected_adv, rtol=0, atol=1e-5)
    torch.testing.assert_close(td["value_target"].view(4), expected_adv + obs, rtol=0, atol=1e-5)
