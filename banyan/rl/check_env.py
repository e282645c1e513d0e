"""`banyan rl check-env ENV`: Gymnasium's checker plus probes for the usual environment design mistakes.

    banyan rl check-env CartPole-v1
    banyan rl check-env examples/loophole_env.py:LoopholeCorridor

A badly designed environment gets exploited instead of solved. Before training, play it with policies
that cannot possibly be "good" -- uniformly random, and every constant action -- and look at what they
get. Probes (each warning is one plain sentence):
  * gymnasium.utils.env_checker.check_env: API conformance (spaces, seeding, dtypes, reset/step);
  * returns of the random policy and of each constant action vs the reward threshold: a policy that
    ignores the observation should never reach it (a loophole) and rarely beat random by far;
  * episode lengths: episodes that never end, or all end after one or two steps;
  * termination vs truncation: a time limit reported as terminated=True (every long episode "dies" at
    the same step) breaks value bootstrapping;
  * rewards: NaN/inf, scale (|r| > 100 per step), no signal at all (the same return for every policy);
  * observations: NaN/inf, values outside the declared space, scales that need normalising.
Exit code: 0 clean, 1 when there are warnings, 2 for bad input.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated

import gymnasium as gym
import numpy as np
import tyro

from banyan.errors import BanyanError
from banyan.config import parse_cli
from banyan.rl.envs import EnvInfo, resolve_env
from banyan.io import atomic_write_json


@dataclass
class CheckEnvConfig:
    """Probe an environment for design mistakes and loopholes."""

    env: Annotated[str, tyro.conf.Positional] = ""
    """Gymnasium id (e.g. CartPole-v1) or MODULE:Class / path/to/file.py:Class."""
    episodes: int = 30
    """Episodes of the random policy."""
    const_episodes: int = 10
    """Episodes per constant-action policy."""
    max_steps: int = 5000
    """Cap on an episode's length when the env has no time limit of its own."""
    threshold: float | None = None
    """Return that counts as solved (default: the env's reward_threshold, if any)."""
    seed: int = 0
    """Seed of the first episode (then seed+1, ...)."""
    json: str = ""
    """Also write the report as JSON to this path."""


@dataclass
class Rollouts:
    """Statistics of the episodes of one policy."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    ends: list[str] = field(default_factory=list)  # "terminated" | "truncated" | "capped"
    rewards: list[float] = field(default_factory=list)
    obs_min: np.ndarray | None = None
    obs_max: np.ndarray | None = None
    bad_obs: int = 0  # steps with NaN/inf in the observation
    out_of_space: int = 0  # steps whose observation is outside observation_space

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))


def _constant_actions(space: gym.Space) -> list[tuple[str, object]]:
    if isinstance(space, gym.spaces.Discrete):
        return [(f"always action {space.start + i}", space.start + i) for i in range(min(int(space.n), 20))]
    if isinstance(space, gym.spaces.Box):
        low = np.where(np.isfinite(space.low), space.low, -1.0).astype(space.dtype)
        high = np.where(np.isfinite(space.high), space.high, 1.0).astype(space.dtype)
        return [("always the lowest action", low), ("always the middle action", ((low + high) / 2).astype(space.dtype)),
                ("always the highest action", high)]
    return []


def _env_call(info: EnvInfo, what: str, fn, *args, **kwargs):
    """Call the env; an exception it raises is the env's fault and becomes one line naming where."""
    try:
        return fn(*args, **kwargs)
    except BanyanError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's env code, whatever it raises
        raise BanyanError(f"{info.name}: env {what} raised {type(e).__name__}: {e}") from None


def play(info: EnvInfo, policy, episodes: int, seed: int, max_steps: int) -> Rollouts:
    """Run `episodes` episodes; policy(obs, action_space) -> action."""
    r = Rollouts()
    env = _env_call(info, "construction", info.factory)
    try:
        env.action_space.seed(seed)
        for ep in range(episodes):
            obs, _ = _env_call(info, f"reset (episode {ep})", env.reset, seed=seed + ep)
            total, end = 0.0, "capped"
            for t in range(1, max_steps + 1):
                obs, reward, terminated, truncated, _ = _env_call(info, f"step {t} of episode {ep}", env.step,
                                                                  policy(obs, env.action_space))
                total += float(reward)
                r.rewards.append(float(reward))
                o = np.asarray(obs, dtype=np.float64).ravel()
                if not np.all(np.isfinite(o)):
                    r.bad_obs += 1
                else:
                    r.obs_min = o if r.obs_min is None else np.minimum(r.obs_min, o)
                    r.obs_max = o if r.obs_max is None else np.maximum(r.obs_max, o)
                if not env.observation_space.contains(np.asarray(obs, dtype=env.observation_space.dtype)):
                    r.out_of_space += 1
                if terminated or truncated:
                    end = "terminated" if terminated else "truncated"
                    break
            r.returns.append(total)
            r.lengths.append(t)
            r.ends.append(end)
    finally:
        env.close()
    return r


def run_gym_checker(info: EnvInfo) -> tuple[list[str], list[str]]:
    """(errors, warnings) from gymnasium's own environment checker."""
    from gymnasium.utils.env_checker import check_env

    env = info.factory()
    errors: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            check_env(env.unwrapped, skip_render_check=True)
        except Exception as e:  # the checker raises AssertionError and others on API violations
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            env.close()
    # gymnasium's checker reports soft problems as UserWarnings (via gymnasium.logger.warn)
    msgs = sorted({re.sub(r"^WARN: ", "", re.sub(r"\x1b\[[0-9;]*m", "", str(w.message)).strip())
                   for w in caught if issubclass(w.category, UserWarning)})
    return errors, msgs


def _return_warnings(policies: dict[str, "Rollouts"], threshold: float | None) -> list[str]:
    """Returns vs the threshold and vs the random policy: nothing blind should solve the task."""
    warn = []
    rnd = policies["random"]
    if threshold is not None:
        if rnd.mean >= threshold:
            warn.append(f"A random policy already reaches the reward threshold ({rnd.mean:.3g} >= {threshold:g}): "
                        "the task is trivial or the threshold too low.")
        for name, r in policies.items():
            if name != "random" and r.mean >= threshold:
                warn.append(f"Loophole: '{name}' scores {r.mean:.3g} >= the threshold {threshold:g} without looking at "
                            "the observation; the reward can be collected without solving the task.")
    spread = max(float(np.std(rnd.returns)), 1e-8)
    for name, r in policies.items():
        if name != "random" and r.mean > rnd.mean + max(3 * spread, 0.5 * abs(rnd.mean) + 1e-6) and \
                not (threshold is not None and r.mean >= threshold):
            warn.append(f"'{name}' beats the random policy by far ({r.mean:.3g} vs {rnd.mean:.3g}): check that "
                        "repeating one action is not an exploit.")
    all_returns = np.concatenate([r.returns for r in policies.values()])
    if np.ptp(all_returns) == 0 and len(all_returns) > 1:
        warn.append(f"Every policy tried got exactly the same return ({all_returns[0]:.3g}): the reward gives no signal "
                    "(sparse reward that blind policies never reach?).")
    return warn


def _episode_warnings(everything: list["Rollouts"], ends: list[str], max_steps: int) -> list[str]:
    """Episode lengths and how episodes end (missing time limits, limits reported as termination)."""
    warn = []
    lengths = np.concatenate([r.lengths for r in everything])
    if "capped" in ends:
        warn.append(f"{ends.count('capped')} episode(s) never ended within {max_steps} steps: add a time limit "
                    "(max_episode_steps / TimeLimit) that sets truncated=True.")
    if np.median(lengths) <= 2:
        warn.append(f"Half the episodes end within {int(np.median(lengths))} step(s): check the termination condition.")
    term_lengths = [n for r in everything for n, e in zip(r.lengths, r.ends) if e == "terminated"]
    if term_lengths and "truncated" not in ends:
        length, count = Counter(term_lengths).most_common(1)[0]
        if length > 2 and length == lengths.max() and count >= max(5, 0.3 * len(ends)):
            warn.append(f"{count} of {len(ends)} episodes end with terminated=True at exactly step {length} and none "
                        "is ever truncated: that looks like a time limit reported as termination; a time limit must "
                        "set truncated=True so that learners bootstrap from the last state.")
    return warn


def _reward_warnings(everything: list["Rollouts"], ends: list[str]) -> tuple[list[str], np.ndarray]:
    """Non-finite, huge or constant rewards; also returns the finite rewards for the report."""
    warn = []
    rewards = np.concatenate([r.rewards for r in everything])
    finite = rewards[np.isfinite(rewards)]
    if len(finite) < len(rewards):
        warn.append(f"{len(rewards) - len(finite)} reward(s) are NaN or infinite.")
    if len(finite) and np.abs(finite).max() > 100:
        warn.append(f"Rewards reach {np.abs(finite).max():.3g} per step: scale them to roughly [-10, 10] "
                    "(large rewards destabilise value learning).")
    if len(finite) and np.ptp(finite) == 0 and "terminated" not in ends:
        warn.append(f"The reward is {finite[0]:.3g} at every step and no episode ever terminates: "
                    "nothing the agent does changes its return.")
    return warn, finite


def _observation_warnings(everything: list["Rollouts"], obs_space) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Non-finite, out-of-space or unnormalised observations; also returns the per-dim min and max seen."""
    warn = []
    bad = sum(r.bad_obs for r in everything)
    if bad:
        warn.append(f"{bad} observation(s) contain NaN or infinite values.")
    outside = sum(r.out_of_space for r in everything)
    if outside:
        warn.append(f"{outside} observation(s) fall outside the declared observation_space {obs_space}.")
    lows = [r.obs_min for r in everything if r.obs_min is not None]
    highs = [r.obs_max for r in everything if r.obs_max is not None]
    obs_lo = np.min(lows, axis=0) if lows else np.array([])
    obs_hi = np.max(highs, axis=0) if highs else np.array([])
    big = [i for i in range(len(obs_hi)) if max(abs(obs_lo[i]), abs(obs_hi[i])) > 1e3]
    if big:
        warn.append(f"Observation dims {big} reach magnitudes above 1000: normalise them (e.g. TorchRL ObservationNorm).")
    return warn, obs_lo, obs_hi


def probe(info: EnvInfo, cfg: CheckEnvConfig) -> dict:
    """Run every probe; returns a report dict with `warnings` (plain sentences) and the statistics."""
    warn: list[str] = []
    errors, checker_warnings = run_gym_checker(info)
    warn += [f"Gymnasium's checker failed: {e}" for e in errors]
    # The checker's soft warnings (e.g. CartPole's infinite velocity bounds) are shown as notes: they
    # are style advice, not design mistakes, and do not make the exit code non-zero.
    notes = list(checker_warnings)

    max_steps = info.max_episode_steps + 1 if info.max_episode_steps else cfg.max_steps
    sample_env = info.factory()
    obs_space, act_space = sample_env.observation_space, sample_env.action_space
    sample_env.close()
    threshold = cfg.threshold if cfg.threshold is not None else info.reward_threshold

    policies: dict[str, Rollouts] = {"random": play(info, lambda o, s: s.sample(), cfg.episodes, cfg.seed, max_steps)}
    for name, action in _constant_actions(act_space):
        policies[name] = play(info, lambda o, s, a=action: a, cfg.const_episodes, cfg.seed, max_steps)
    everything = list(policies.values())
    ends = [e for r in everything for e in r.ends]
    warn += _return_warnings(policies, threshold)
    warn += _episode_warnings(everything, ends, max_steps)
    reward_warn, finite = _reward_warnings(everything, ends)
    warn += reward_warn
    obs_warn, obs_lo, obs_hi = _observation_warnings(everything, obs_space)
    warn += obs_warn

    return {
        "env": info.name, "threshold": threshold, "max_episode_steps": info.max_episode_steps,
        "observation_space": str(obs_space), "action_space": str(act_space),
        "policies": {n: {"return_mean": r.mean, "return_std": float(np.std(r.returns)),
                         "length_mean": float(np.mean(r.lengths)), "length_min": int(min(r.lengths)),
                         "length_max": int(max(r.lengths)), "ends": dict(Counter(r.ends))}
                     for n, r in policies.items()},
        "reward": {"min": float(finite.min()) if len(finite) else None, "max": float(finite.max()) if len(finite) else None,
                   "mean": float(finite.mean()) if len(finite) else None, "std": float(finite.std()) if len(finite) else None},
        "observation": {"min": obs_lo.tolist(), "max": obs_hi.tolist()},
        "warnings": warn, "notes": notes,
    }


def format_report(rep: dict) -> str:
    thr = "none" if rep["threshold"] is None else f"{rep['threshold']:g}"
    lines = [f"check-env {rep['env']}", f"  observation space {rep['observation_space']}",
             f"  action space      {rep['action_space']}",
             f"  reward threshold  {thr};  time limit {rep['max_episode_steps'] or 'none'}", "",
             f"  {'policy':<28}{'return':>18}{'length (min-max)':>22}  ends"]
    for name, p in rep["policies"].items():
        std = p["return_std"] if p["return_std"] > 1e-9 * max(1.0, abs(p["return_mean"])) else 0.0
        ret = f"{p['return_mean']:.3g} ± {std:.2g}"
        length = f"{p['length_mean']:.0f} ({p['length_min']}-{p['length_max']})"
        ends = ", ".join(f"{k} {v}" for k, v in sorted(p["ends"].items()))
        lines.append(f"  {name:<28}{ret:>18}{length:>22}  {ends}")
    rw = rep["reward"]
    if rw["min"] is not None:
        lines.append(f"\n  reward per step: min {rw['min']:.3g}, max {rw['max']:.3g}, mean {rw['mean']:.3g}, std {rw['std']:.3g}")
    obs = rep["observation"]
    if obs["min"]:
        lines.append("  observation range: " + ", ".join(f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(obs["min"], obs["max"])))
    lines.append("")
    lines += [f"  note (gymnasium checker): {n}" for n in rep["notes"]]
    if rep["warnings"]:
        lines.append(f"  {len(rep['warnings'])} warning(s):")
        lines += [f"  ! {w}" for w in rep["warnings"]]
    else:
        lines.append("  no warnings: no blind policy solves it and the API, rewards and observations look sane.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(CheckEnvConfig, argv, prog="banyan rl check-env")
    if not cfg.env:
        raise BanyanError("give an environment: a Gymnasium id (e.g. CartPole-v1) or MODULE:Class")
    if cfg.episodes <= 0 or cfg.const_episodes <= 0 or cfg.max_steps <= 0:
        raise BanyanError("--episodes, --const_episodes and --max_steps must be positive")
    info = resolve_env(cfg.env)
    rep = probe(info, cfg)
    print(format_report(rep))
    if cfg.json:
        atomic_write_json(cfg.json, rep, default=float)
    return 1 if rep["warnings"] else 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
