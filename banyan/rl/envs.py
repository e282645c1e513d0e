"""Environments for the RL lab: name resolution, the partially observable CartPole, TorchRL wrapping.

`resolve_env(name)` accepts a Gymnasium id (`CartPole-v1`, `banyan/CartPoleNoVel-v0`) or a class
reference `MODULE:Class` / `path/to/file.py:Class` and returns a zero-argument factory that builds one
`gymnasium.Env`. `make_env` turns K copies into one batched TorchRL env.

Why a plain `gymnasium.vector.SyncVectorEnv` inside TorchRL's `GymWrapper` rather than `ParallelEnv` or
`SerialEnv`: on this 2-core machine, with CartPole and a random policy (frames per second, 512-frame
batches through TorchRL's `Collector`): SyncVectorEnv x16 8.8k, x8 3.9k; SerialEnv x8 1.6k;
ParallelEnv 2 workers x 4 envs 0.4k (process hops cost more than CartPole's physics). The vector env
runs with `autoreset_mode=DISABLED`, so TorchRL sees the true final observation of each episode and
resets finished sub-envs itself (needed for correct bootstrapping on truncation).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import tensordict  # noqa: F401  (the `rl` extra: imported here so a missing one fails at import, which
import torch
import torchrl  # noqa: F401   the CLI turns into "install banyan-lm[rl]")

from banyan.errors import BanyanError

NOVEL_ID = "banyan/CartPoleNoVel-v0"


# ----------------------------------------------------------------------------- partially observable CartPole
class HideVelocity(gym.ObservationWrapper):
    """CartPole with the two velocities removed: observation = (cart position, pole angle).

    A memoryless policy cannot tell which way the pole is falling from one frame, so it has to infer
    velocity from a history of observations (a transformer over the last T frames can; an MLP on the
    current frame cannot). This is the classic POMDP variant of CartPole (e.g. the "CartPole-P" of
    memory-based RL benchmarks).
    """

    KEEP = (0, 2)  # CartPole obs = (x, x_dot, theta, theta_dot)

    def __init__(self, env: gym.Env):
        super().__init__(env)
        box = env.observation_space
        idx = list(self.KEEP)
        self.observation_space = gym.spaces.Box(box.low[idx], box.high[idx], dtype=box.dtype)

    def observation(self, observation):
        return observation[list(self.KEEP)]


def make_cartpole_novel(**kwargs) -> gym.Env:
    """Entry point for `banyan/CartPoleNoVel-v0` (gym.make adds the 500-step TimeLimit)."""
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    return HideVelocity(CartPoleEnv(**kwargs))


def register_envs() -> None:
    """Register banyan's environments with Gymnasium (idempotent)."""
    if NOVEL_ID not in gym.registry:
        gym.register(id=NOVEL_ID, entry_point="banyan.rl.envs:make_cartpole_novel", max_episode_steps=500,
                     reward_threshold=475.0)


register_envs()


# ----------------------------------------------------------------------------- name resolution
@dataclass
class EnvInfo:
    """What the lab needs to know about an environment besides its spaces."""

    name: str
    factory: Callable[[], gym.Env]
    reward_threshold: float | None
    max_episode_steps: int | None


def _run_env_module(load: Callable, ref: str):
    """Run the import of a user's env module; its syntax or import-time errors become one line."""
    try:
        return load()
    except SyntaxError as e:
        raise BanyanError(f"environment '{ref}': syntax error in {e.filename}, line {e.lineno}: {e.msg}") from None
    except ModuleNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any error the user's module raises while it is imported
        raise BanyanError(f"environment '{ref}': importing its module raised {type(e).__name__}: {e}") from None


def _load_class(ref: str) -> type:
    """`pkg.module:Class` or `path/to/file.py:Class` -> the class object."""
    mod_name, _, cls_name = ref.rpartition(":")
    if mod_name.endswith(".py") or "/" in mod_name:
        path = Path(mod_name)
        if not path.is_file():
            raise BanyanError(f"environment file not found: {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # dataclasses/pickling look the module up by name
        _run_env_module(lambda: spec.loader.exec_module(module), ref)
    else:
        try:
            module = _run_env_module(lambda: importlib.import_module(mod_name), ref)
        except ModuleNotFoundError:
            # like `python -m`, also look in the current directory (the `banyan` script does not)
            if os.getcwd() not in sys.path:
                sys.path.append(os.getcwd())
            try:
                module = importlib.import_module(mod_name)
            except ModuleNotFoundError as e:
                raise BanyanError(f"cannot import module '{mod_name}' for environment '{ref}': {e}") from None
    if not hasattr(module, cls_name):
        names = [n for n in dir(module) if isinstance(getattr(module, n), type)]
        close = difflib.get_close_matches(cls_name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise BanyanError(f"module '{mod_name}' has no class '{cls_name}'{hint}")
    cls = getattr(module, cls_name)
    if not (isinstance(cls, type) and issubclass(cls, gym.Env)):
        raise BanyanError(f"'{ref}' is not a gymnasium.Env subclass (got {cls!r})")
    return cls


def resolve_env(name: str) -> EnvInfo:
    """Turn a Gymnasium id or `MODULE:Class` into an `EnvInfo`; unknown ids suggest close matches."""
    if ":" in name and name.split(":", 1)[0] not in gym.registry:
        cls = _load_class(name)
        spec = getattr(cls, "spec", None)
        threshold = getattr(cls, "reward_threshold", None) or getattr(spec, "reward_threshold", None)
        max_steps = getattr(cls, "max_episode_steps", None)

        def factory() -> gym.Env:
            env = cls()
            return gym.wrappers.TimeLimit(env, max_steps) if max_steps else env

        return EnvInfo(name, factory, threshold, max_steps)
    if name not in gym.registry:
        close = difflib.get_close_matches(name, list(gym.registry), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see gymnasium.pprint_registry()"
        raise BanyanError(f"unknown environment id '{name}'{hint}")
    spec = gym.spec(name)
    return EnvInfo(name, lambda: gym.make(name), spec.reward_threshold, spec.max_episode_steps)


# ----------------------------------------------------------------------------- TorchRL wrapping
def action_kind(action_space: gym.Space) -> str:
    """'discrete' or 'continuous'; other spaces are a user error."""
    if isinstance(action_space, gym.spaces.Discrete):
        return "discrete"
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return "continuous"
    raise BanyanError(f"action space {action_space} is not supported (need Discrete or a 1-D Box)")


def probe_spaces(info: EnvInfo) -> tuple[gym.Space, gym.Space]:
    """Observation and action space of one instance (closed right after)."""
    env = info.factory()
    try:
        if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
            raise BanyanError(f"{info.name}: observation space {env.observation_space} is not supported "
                              "(the lab's policies take a 1-D Box)")
        return env.observation_space, env.action_space
    finally:
        env.close()


def _single_env(name: str):
    """One TorchRL env by name; module-level (picklable) so that ParallelEnv's spawned workers can call it."""
    from torchrl.envs import GymWrapper

    return GymWrapper(resolve_env(name).factory(), device="cpu")


def make_env(info: EnvInfo, num_envs: int, seed: int, history: int = 1, backend: str = "vector",
             role: str = "training"):
    """K copies of the env as one TorchRL env with batch size [K].

    backend: `vector` (default) one gymnasium SyncVectorEnv in GymWrapper; `serial` TorchRL SerialEnv of
    K GymWrappers in this process; `parallel` TorchRL ParallelEnv, one spawned worker per copy (scripts
    using it need an `if __name__ == "__main__":` guard). Timings: see the module docstring.
    Keys: `observation` [K, D] (or [K, T, D] when history > 1: the last T observations, oldest first,
    the first one repeated at an episode start), `action`, `("next", "reward")`, `done`/`terminated`/
    `truncated`, `episode_reward` (running return, RewardSum) and `step_count`. A non-finite observation
    or reward stops the run there (banyan.rl.guards.FiniteGuard; `role` names the env in that message).
    """
    from functools import partial

    from gymnasium.vector import AutoresetMode
    from torchrl.envs import (CatFrames, Compose, DoubleToFloat, GymWrapper, ParallelEnv, RewardSum, SerialEnv,
                              StepCounter, TransformedEnv, UnsqueezeTransform)

    if backend == "vector":
        venv = gym.vector.SyncVectorEnv([info.factory] * num_envs, autoreset_mode=AutoresetMode.DISABLED)
        env = GymWrapper(venv, device="cpu")
    elif backend in ("serial", "parallel"):
        batched = SerialEnv if backend == "serial" else ParallelEnv
        env = batched(num_envs, partial(_single_env, info.name))
    else:
        raise BanyanError(f"unknown env backend '{backend}' (expected vector, serial or parallel)")
    from banyan.rl.guards import FiniteGuard

    transforms = [FiniteGuard(info.name, num_envs, role), DoubleToFloat(), StepCounter(), RewardSum()]
    if history > 1:
        # [K, D] -> [K, 1, D] -> concatenate the last T along dim -2 -> [K, T, D]
        transforms += [UnsqueezeTransform(dim=-2, in_keys=["observation"], in_keys_inv=[]),
                       CatFrames(N=history, dim=-2, in_keys=["observation"])]
    env = TransformedEnv(env, Compose(*transforms))
    env.set_seed(seed)
    return env


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
