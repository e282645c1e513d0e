"""RL guards: one run per folder, finite numbers only, capped evaluation, one-line errors for broken envs."""

import pytest
import torch

from banyan.cli import main as cli
from banyan.errors import BanyanError
from banyan.io import FolderLock
from banyan.rl.guards import NonFiniteError, check_loss, check_weights

ENVS = '''
import gymnasium as gym, numpy as np
class Base(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)
    max_episode_steps = 20
    def reset(self, seed=None, options=None):
        super().reset(seed=seed); self.t = 0
        return np.zeros(3, np.float32), {}
    def step(self, a):
        self.t += 1
        return np.zeros(3, np.float32), 1.0, self.t >= 10, False, {}
class NanObs(Base):
    def step(self, a):
        o, r, term, trunc, i = super().step(a)
        return np.full(3, np.nan if self.t > 3 else 0.0, np.float32), r, term, trunc, i
class NanReward(Base):
    def step(self, a):
        o, r, term, trunc, i = super().step(a)
        return o, float("inf") if self.t > 3 else r, term, trunc, i
class Forever(Base):
    max_episode_steps = None
    def step(self, a):
        return np.zeros(3, np.float32), 1.0, False, False, {}
class Raises(Base):
    def step(self, a):
        raise RuntimeError("boom in step")
'''

FAST = ["--steps", "64", "--envs", "2", "--eval_every", "0", "--eval_episodes", "2", "--no_verbose",
        "--log.no_plots", "--log.no_tensorboard", "--ppo.epochs", "1", "--ppo.rollout_steps", "16"]


@pytest.fixture
def envs(tmp_path):
    path = tmp_path / "bad_envs.py"
    path.write_text(ENVS)
    return lambda name: f"{path}:{name}"


def rl(args, capsys):
    rc = cli(["rl", "train", *args])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_existing_run_is_refused_and_overwrite_keeps_user_files(tmp_path, envs, capsys):
    out = tmp_path / "run"
    assert rl(["--env", envs("Base"), "--out", str(out), *FAST], capsys)[0] == 0
    final = (out / "checkpoints" / "final.safetensors").read_bytes()
    rc, err = rl(["--env", envs("Base"), "--out", str(out), "--seed", "2", *FAST], capsys)
    assert rc == 2 and len(err) == 1 and "already holds a run" in err[0] and "--overwrite" in err[0]
    assert (out / "checkpoints" / "final.safetensors").read_bytes() == final  # untouched
    (out / "NOTES.md").write_text("mine")
    assert rl(["--env", envs("Base"), "--out", str(out), "--seed", "2", "--overwrite", *FAST], capsys)[0] == 0
    assert (out / "NOTES.md").read_text() == "mine" and (out / "summary.json").is_file()


def test_a_locked_run_folder_and_a_file_as_out_are_one_line(tmp_path, envs, capsys):
    out = tmp_path / "run"
    with FolderLock(out, "run folder"):
        rc, err = rl(["--env", envs("Base"), "--out", str(out), *FAST], capsys)
    assert rc == 2 and len(err) == 1 and "is in use by pid" in err[0]
    (tmp_path / "f").write_text("x")
    rc, err = rl(["--env", envs("Base"), "--out", str(tmp_path / "f"), *FAST], capsys)
    assert rc == 2 and err == [f"banyan rl train: error: --out '{tmp_path / 'f'}' is a file, not a folder"]


@pytest.mark.parametrize("algo,env,what", [("dqn", "NanObs", "observation"), ("ppo", "NanObs", "observation"),
                                           ("ppo", "NanReward", "reward")])
def test_non_finite_env_output_stops_the_run_naming_env_and_step(tmp_path, envs, capsys, algo, env, what):
    out = tmp_path / "run"
    rc, err = rl(["--algo", algo, "--env", envs(env), "--out", str(out), "--dqn.learning_starts", "8", *FAST], capsys)
    assert rc == 2 and len(err) == 1, err
    assert f"{envs(env)}: non-finite {what} after a step at training env step 8 (sub-env 0 of 2)" in err[0]
    assert not (out / "checkpoints").exists()  # nothing saved


def test_non_finite_loss_and_weights_are_refused():
    check_loss(torch.tensor(1.0), "E", 5)
    with pytest.raises(NonFiniteError, match="E: non-finite PPO loss \\(nan\\) at env step 5"):
        check_loss(torch.tensor(float("nan")), "E", 5, "PPO loss")
    net = torch.nn.Linear(2, 2)
    check_weights({"actor": net}, "E", 7)
    with torch.no_grad():
        net.bias[1] = float("inf")
    with pytest.raises(NonFiniteError, match="E: weights actor.bias became non-finite at env step 7"):
        check_weights({"actor": net}, "E", 7)
    # with the flat parameter buffer: the same error names the tensor; a finite one passes
    from banyan.rl.flat import FlatParams

    flat = FlatParams(net.parameters())
    with pytest.raises(NonFiniteError, match="actor.bias became non-finite"):
        check_weights({"actor": net}, "E", 7, flat.param)
    with torch.no_grad():
        net.bias[1] = 0.0
    check_weights({"actor": net}, "E", 7, flat.param)
    # a non-finite buffer is still caught when the flat parameters are finite
    bn = torch.nn.BatchNorm1d(2)
    bn.running_mean[0] = float("nan")
    with pytest.raises(NonFiniteError, match="norm.running_mean"):
        check_weights({"actor": net, "norm": bn}, "E", 7, flat.param)
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        check_loss(torch.tensor([1.0, float("inf")]), "E", 5)


def test_non_finite_weights_never_reach_a_checkpoint(tmp_path):
    from types import SimpleNamespace

    from banyan.rl.loop import Run

    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    cfg = SimpleNamespace(eval_every=0, checkpoint_every=0, steps=10, eval_max_steps=0, env="E", algo="ppo",
                          policy="mlp", keep_checkpoints=2)
    run = Run(cfg, tmp_path, None, None, {"actor": net}, None, None)
    with pytest.raises(NonFiniteError):
        run.checkpoint(10, "final.safetensors")
    assert not (tmp_path / "checkpoints" / "final.safetensors").exists()


def test_an_endless_env_is_evaluated_up_to_the_cap_with_a_warning(tmp_path, envs, capsys):
    import json

    out = tmp_path / "run"
    rc, err = rl(["--env", envs("Forever"), "--out", str(out), "--eval_max_steps", "25", *FAST], capsys)
    assert rc == 0
    assert any("2 of 2 evaluation episodes were still running after 25 steps" in line for line in err), err
    assert json.loads((out / "summary.json").read_text())["final_return_mean"] == 25.0


def test_the_eval_cap_follows_the_env_time_limit():
    from banyan.rl.envs import resolve_env
    from banyan.rl.train import RLConfig, eval_cap

    assert eval_cap(RLConfig(), resolve_env("CartPole-v1")) == 501
    assert eval_cap(RLConfig(eval_max_steps=7), resolve_env("CartPole-v1")) == 7


@pytest.mark.parametrize("flag,value,message", [
    ("--steps", "0", "--steps must be >= 1, got 0"), ("--ppo.gamma", "2", r"--ppo.gamma must be in \[0.0, 1.0\]"),
    ("--dqn.lr", "nan", "--dqn.lr must be a finite number, got nan"), ("--envs", "-1", "--envs must be >= 1"),
    ("--eval_max_steps", "-5", "--eval_max_steps must be >= 0, got -5"),
])
def test_rl_numbers_are_checked_at_parse_time(tmp_path, capsys, flag, value, message):
    import re

    rc, err = rl([flag, value, "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "r").exists()


def test_env_file_with_a_syntax_error_and_a_raising_step_are_one_line(tmp_path, envs, capsys):
    bad = tmp_path / "broken.py"
    bad.write_text("import gymnasium as gym\nclass X(gym.Env:\n    pass\n")
    rc, err = rl(["--env", f"{bad}:X", "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and len(err) == 1 and f"syntax error in {bad}, line 2" in err[0]
    rc = cli(["rl", "check-env", envs("Raises"), "--episodes", "1", "--const_episodes", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "raised RuntimeError: boom in step" in err[-1], err
    with pytest.raises(BanyanError):
        from banyan.rl.envs import resolve_env

        resolve_env(f"{bad}:X")
