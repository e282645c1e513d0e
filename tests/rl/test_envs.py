"""Environment resolution, the partially observable CartPole, TorchRL wrapping and bad-input errors."""

import sys
from pathlib import Path

import gymnasium as gym
import pytest

from banyan.cli import BanyanError, main as cli_main
from banyan.rl.envs import NOVEL_ID, make_env, resolve_env
from banyan.rl.train import RLConfig, validate

EXAMPLE = Path(__file__).parents[2] / "examples" / "loophole_env.py"


def test_novel_cartpole_hides_velocities():
    env = gym.make(NOVEL_ID)
    obs, _ = env.reset(seed=0)
    full = gym.make("CartPole-v1")
    full_obs, _ = full.reset(seed=0)
    assert obs.shape == (2,)
    assert list(obs) == [full_obs[0], full_obs[2]]  # same physics, velocities dropped
    assert env.spec.max_episode_steps == 500 and env.spec.reward_threshold == 475


def test_make_env_batches_and_stacks_history():
    info = resolve_env(NOVEL_ID)
    env = make_env(info, num_envs=3, seed=0, history=4)
    td = env.reset()
    assert td["observation"].shape == (3, 4, 2)  # [K, T, D]
    # at an episode start the window repeats the first observation
    assert (td["observation"] == td["observation"][:, :1]).all()
    td = env.rand_step(td)
    assert td["next", "observation"].shape == (3, 4, 2)
    assert td["next", "reward"].shape == (3, 1)
    # a partial reset restarts the window of the finished sub-env only
    for _ in range(200):
        td, root = env.step_and_maybe_reset(env.rand_action(td))
        done = td["next", "done"].view(-1)
        if done.any():
            i = int(done.nonzero()[0, 0])
            assert (root["observation"][i] == root["observation"][i, :1]).all()
            break
        td = root
    else:
        pytest.fail("no episode ended in 200 random steps")
    env.close()


def test_unknown_env_suggests_close_match():
    with pytest.raises(BanyanError, match="did you mean CartPole-v1"):
        resolve_env("CartPole-v2")


def test_module_class_reference():
    info = resolve_env(f"{EXAMPLE}:FixedCorridor")
    assert info.reward_threshold == 9.0 and info.max_episode_steps == 100
    with pytest.raises(BanyanError, match="no class 'FixedCoridor'.*FixedCorridor"):
        resolve_env(f"{EXAMPLE}:FixedCoridor")


def test_dotted_module_reference_from_cwd(monkeypatch):
    monkeypatch.chdir(EXAMPLE.parents[1])
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(EXAMPLE.parents[1]))])
    assert resolve_env("examples.loophole_env:LoopholeCorridor").reward_threshold == 9.0
    with pytest.raises(BanyanError, match="cannot import module 'examples.nope'"):
        resolve_env("examples.nope:Env")


def test_dqn_on_continuous_actions_is_refused():
    with pytest.raises(BanyanError, match="dqn needs a discrete action space.*Pendulum-v1"):
        validate(RLConfig(algo="dqn", env="Pendulum-v1"))


def test_cli_bad_input_exits_2(capsys):
    assert cli_main(["rl", "train", "--env", "CartPol-v1"]) == 2
    assert "did you mean CartPole-v1" in capsys.readouterr().err
    assert cli_main(["rl", "train", "--algo", "dqn", "--env", "Pendulum-v1"]) == 2
    assert "discrete action space" in capsys.readouterr().err


def test_cli_missing_rl_extra(monkeypatch, capsys):
    for name in [m for m in sys.modules if m.startswith("banyan.rl.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchrl", None)  # import torchrl -> ModuleNotFoundError
    assert cli_main(["rl", "check-env", "CartPole-v1"]) == 2
    assert "banyan-lm[rl]" in capsys.readouterr().err
