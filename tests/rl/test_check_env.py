"""check-env: the loophole example is flagged, its fixed twin and CartPole are clean."""

import json

import pytest
from pathlib import Path

from banyan.rl.check_env import CheckEnvConfig, main, probe
from banyan.rl.envs import resolve_env

EXAMPLE = Path(__file__).parents[2] / "examples" / "loophole_env.py"
FAST = dict(episodes=10, const_episodes=4)


def test_flags_the_loophole_example(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main([f"{EXAMPLE}:LoopholeCorridor", "--episodes", "10", "--const_episodes", "4", "--json", str(out)]) == 1
    text = capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert rep["policies"]["always action 1"]["return_mean"] == pytest.approx(20.0)  # parks and farms the shaping bonus
    assert any(w.startswith("Loophole: 'always action 1' scores 20") for w in rep["warnings"])
    assert any("time limit reported as termination" in w for w in rep["warnings"])
    assert "Loophole" in text and "warning(s)" in text


def test_fixed_example_is_clean():
    rep = probe(resolve_env(f"{EXAMPLE}:FixedCorridor"), CheckEnvConfig(**FAST))
    assert rep["warnings"] == []
    assert rep["policies"]["always action 1"]["ends"] == {"truncated": 4}


def test_cartpole_is_clean_and_measured():
    rep = probe(resolve_env("CartPole-v1"), CheckEnvConfig(**FAST))
    assert rep["warnings"] == []
    assert any("infinity" in n for n in rep["notes"])  # gymnasium's own advice, not a warning
    assert 10 < rep["policies"]["random"]["return_mean"] < 60  # random CartPole lasts ~22 steps
    assert rep["reward"] == {"min": 1.0, "max": 1.0, "mean": 1.0, "std": 0.0}


def test_probe_catches_bad_rewards_and_observations(tmp_path):
    src = tmp_path / "bad_env.py"
    src.write_text('''
import gymnasium as gym, numpy as np
class Bad(gym.Env):
    reward_threshold = None
    max_episode_steps = 20
    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}
    def step(self, action):
        obs = np.array([5000.0, np.nan if action == 1 else 0.0], np.float32)  # out of bounds, NaN
        return obs, 1000.0 * action, False, False, {}
''')
    rep = probe(resolve_env(f"{src}:Bad"), CheckEnvConfig(**FAST))
    text = " ".join(rep["warnings"])
    assert "NaN or infinite values" in text
    assert "outside the declared observation_space" in text
    assert "Rewards reach 1e+03" in text
    assert "above 1000" in text
    assert "'always action 1' beats the random policy" in text
