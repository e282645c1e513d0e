"""A custom environment with a deliberate loophole, and the probe that catches it.

The task: an agent on a 1-D corridor (cells -10..10) starts at 0 and must walk to a goal placed 5 to 9
cells away, left or right at random; the observation is (agent position, goal position) / 10, the
actions are 0 = left, 1 = stay, 2 = right. Reaching the goal pays +10 and ends the episode. The
reward threshold is 9: an agent that walks straight to the goal scores about 9.3.

`FixedCorridor` is the sound design: a -0.1 cost per step, and a 100-step time limit that *truncates*.

`LoopholeCorridor` has two deliberate design mistakes of the kind that are easy to make:
  1. shaping gone wrong: to "encourage progress" it pays +0.2 on every step in which the distance to
     the goal does not grow. Standing still never increases the distance, so `always stay` collects
     100 x 0.2 = 20 per episode -- more than walking to the goal -- and a learner will happily park;
  2. its own step counter ends the episode with terminated=True at step 100 instead of truncated=True,
     so learners treat the time limit as a real end of the world and stop bootstrapping there.

Run the probe (exit code 1 = warnings):

    banyan rl check-env examples/loophole_env.py:LoopholeCorridor
    banyan rl check-env examples/loophole_env.py:FixedCorridor
    python examples/loophole_env.py          # both, side by side

For LoopholeCorridor the report says that 'always action 1' scores 20 >= the threshold 9 without looking
at the observation (the loophole), and that every long episode ends with terminated=True at exactly
step 100 (the time limit reported as termination). FixedCorridor passes with no warnings.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class FixedCorridor(gym.Env):
    """Walk to the goal; -0.1 per step, +10 at the goal; the 100-step limit is a truncation (TimeLimit)."""

    metadata = {"render_modes": []}
    reward_threshold = 9.0  # read by banyan's env loader as the "solved" return
    max_episode_steps = 100  # banyan's loader wraps the env in gymnasium's TimeLimit (truncated=True)
    size = 10

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(3)
        self.pos = 0
        self.goal = 5

    def _obs(self) -> np.ndarray:
        return np.array([self.pos, self.goal], dtype=np.float32) / self.size

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        side = 1 if self.np_random.random() < 0.5 else -1
        self.pos, self.goal = 0, side * int(self.np_random.integers(5, 10))
        return self._obs(), {}

    def _move(self, action: int) -> tuple[int, int]:
        """Apply the action; returns (distance before, distance after)."""
        before = abs(self.goal - self.pos)
        self.pos = int(np.clip(self.pos + int(action) - 1, -self.size, self.size))
        return before, abs(self.goal - self.pos)

    def step(self, action):
        self._move(action)
        reached = self.pos == self.goal
        reward = 10.0 if reached else -0.1
        return self._obs(), reward, reached, False, {}


class LoopholeCorridor(FixedCorridor):
    """The same task with a farmable shaping bonus and a time limit reported as termination."""

    max_episode_steps = None  # counts steps itself (mistake 2)
    limit = 100

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.t = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.t += 1
        before, after = self._move(action)
        reached = self.pos == self.goal
        # Mistake 1: "reward progress" -- but 'not moving away' includes standing still.
        reward = 10.0 if reached else (0.2 if after <= before else 0.0)
        # Mistake 2: the time limit says terminated=True (the episode did not really end, it was cut).
        terminated = reached or self.t >= self.limit
        return self._obs(), reward, terminated, False, {}


if __name__ == "__main__":
    import sys
    from pathlib import Path

    from banyan.rl.check_env import main

    here = Path(__file__)
    codes = [main([f"{here}:{name}"]) for name in ("LoopholeCorridor", "FixedCorridor")]
    print(f"\nexit codes: LoopholeCorridor {codes[0]}, FixedCorridor {codes[1]}")
    sys.exit(0 if codes == [1, 0] else 1)
