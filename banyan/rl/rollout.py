"""PPO's fast path for discrete actions: K Gymnasium envs stepped on numpy arrays, one TensorDict per batch.

`VecEnv` steps K env copies in one Python loop; `NativeVecEnv` steps them in one call of the env's own
numpy-vectorised implementation (CartPole: Gymnasium's CartPoleVectorEnv), for evaluation and, where
banyan can reset finished copies within the step (SUBSET_RESET), for training too.

Why not TorchRL's `Collector` here: on CartPole the networks are tiny, so the time per env step is all
bookkeeping. Measured on the 2-core machine (load ~7, 8 envs, microseconds per vector step): TorchRL
collector path (TransformedEnv + ProbabilisticActor on a TensorDict) ~9,000 (cProfile'd), plain
`net(obs)` + sample + critic ~800, the 8 env steps themselves ~680. So collection writes plain tensors
and builds ONE TensorDict per batch, with exactly the keys TorchRL's `GAE` and `ClipPPOLoss` read from a
`Collector` batch; the loss, the advantage estimator and the actor module stay TorchRL's.

Semantics kept from the TorchRL env path (banyan.rl.envs.make_env): no auto-reset inside an env (the
true final observation is `("next", "observation")`, so GAE bootstraps a time-limit truncation from it),
finished sub-envs are reset before the next step, a history window [K, T, D] repeats the first
observation at an episode start (as CatFrames), and a non-finite observation or reward stops the run
with banyan.rl.guards' one-line message, counting env steps over all K copies. The two env classes draw
episode starts differently (K seeded RNGs vs one), so runs on them differ; each is deterministic per seed.
"""

from __future__ import annotations

import numpy as np
import torch

from banyan.rl.guards import non_finite_error


class VecEnv:
    """K copies of one Gymnasium env; `obs` is the current policy input, float32 [K, D] or [K, T, D]."""

    def __init__(self, info, num_envs: int, seed: int, history: int = 1, role: str = "training"):
        self.name, self.role, self.k, self.history = info.name, role, num_envs, history
        self.envs = [info.factory() for _ in range(num_envs)]
        space = self.envs[0].action_space
        self.n_actions = int(space.n) if hasattr(space, "n") else 0  # Discrete only (the fast path's condition)
        self.steps = 0  # env steps over all K copies, as banyan.rl.guards.FiniteGuard counts them
        self.frames = np.stack([self._reset_one(i, seed + i) for i in range(num_envs)])  # [K, D]
        self.window = np.repeat(self.frames[:, None], history, axis=1) if history > 1 else None  # [K, T, D]

    def _check(self, key: str, values: np.ndarray, when: str, alive: np.ndarray | None = None) -> None:
        if np.isfinite(values).all():  # the usual case in one call; the per-copy search only on a failure
            return
        ok = np.isfinite(values.reshape(self.k, -1)).all(axis=1)
        if alive is not None:  # copies whose episode ended are not looked at
            ok |= ~alive
        if not ok.all():
            raise non_finite_error(self.name, key, when, self.role, self.steps, int(np.argmin(ok)), self.k)

    def _reset_one(self, i: int, seed: int | None = None) -> np.ndarray:
        obs, _ = self.envs[i].reset(seed=seed)
        obs = np.asarray(obs, dtype=np.float32)
        if not np.isfinite(obs).all():
            raise non_finite_error(self.name, "observation", "on reset", self.role, self.steps, i, self.k)
        return obs

    def reset_all(self) -> None:
        """Start a fresh episode in every copy (evaluation), continuing each env's own RNG."""
        self.frames = np.stack([self._reset_one(i) for i in range(self.k)])
        if self.window is not None:
            self.window[:] = self.frames[:, None]

    def current(self) -> np.ndarray:
        """The current policy input [K, D] or [K, T, D], not copied: it changes on the next `step`."""
        return self.window if self.window is not None else self.frames

    def obs(self) -> torch.Tensor:
        return torch.from_numpy(self.current().copy())

    def step(self, actions: np.ndarray, alive: np.ndarray | None = None):
        """Step the copies (only those in `alive`, if given; the rest report zeros) with integer actions [K].

        Returns (next policy input before any reset [K, ...], reward [K], terminated [K], truncated [K]),
        all numpy; the current input (`obs()`) moves on to the next state, or to a fresh episode where
        one ended (except with `alive`, which evaluation uses and never resets).
        """
        k = self.k
        frames, reward = self.frames.copy(), np.zeros(k, np.float32)
        term, trunc = np.zeros(k, bool), np.zeros(k, bool)
        for i in range(k) if alive is None else np.flatnonzero(alive):
            o, r, te, tr, _ = self.envs[i].step(int(actions[i]))
            frames[i], reward[i], term[i], trunc[i] = o, r, te, tr
        self.steps += k
        self._check("observation", frames, "after a step")
        self._check("reward", reward, "after a step")
        if self.window is not None:
            self.window[:, :-1] = self.window[:, 1:]  # drop the oldest frame
            self.window[:, -1] = frames
            nxt = self.window.copy()
        else:
            nxt = frames.copy()
        self.frames = frames
        if alive is None:
            for i in np.flatnonzero(term | trunc):
                self.frames[i] = self._reset_one(i)
                if self.window is not None:
                    self.window[i] = self.frames[i]
        return nxt, reward, term, trunc

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _reset_cartpole(vec, mask: np.ndarray) -> np.ndarray:
    """Fresh episodes for the copies in `mask` [K] of a Gymnasium CartPoleVectorEnv, drawn as its own
    `reset` draws them (uniform in [low, high] from its RNG; gymnasium/envs/classic_control/cartpole.py);
    returns their observations [n, 4]. `prev_done` is cleared so its next-step auto-reset leaves them be."""
    vec.state[:, mask] = vec.np_random.uniform(low=vec.low, high=vec.high, size=(4, int(mask.sum())))
    vec.steps[mask] = 0
    vec.prev_done[mask] = False
    return vec.state.T[mask].astype(np.float32)


# Vector implementations (Gymnasium's `vector_entry_point` class name) whose finished copies banyan can
# reset within the step: their own auto-reset is next-step (the step after an end ignores the action and
# returns the reset observation with reward 0), which would put a non-transition into every PPO batch.
SUBSET_RESET = {"CartPoleVectorEnv": _reset_cartpole}


class NativeVecEnv(VecEnv):
    """K copies stepped by the env's own numpy-vectorised implementation (Gymnasium's `vector_entry_point`,
    e.g. CartPoleVectorEnv): one call per step for all K instead of K Python steps (on CartPole with K = 8
    about 20 us instead of 130 us per step, wrappers and per-step action checks included).

    Evaluation (`step(actions, alive)`): no resets; `evaluate_greedy` reads each copy's first episode only,
    so the env's next-step auto-reset never shows. Training (`step(actions)`, where SUBSET_RESET knows the
    class): the same contract as VecEnv: the true last observation is returned, and finished copies start a
    fresh episode before the next step. One RNG (seeded once) draws every copy's starts. No history windows."""

    def __init__(self, info, num_envs: int, seed: int, role: str = "evaluation"):
        import gymnasium as gym

        self.name, self.role, self.k, self.history, self.window, self.steps = info.name, role, num_envs, 1, None, 0
        self.vec = gym.make_vec(info.name, num_envs=num_envs, vectorization_mode="vector_entry_point")
        self.n_actions = int(self.vec.single_action_space.n) if hasattr(self.vec.single_action_space, "n") else 0
        self._reset = SUBSET_RESET.get(type(self.vec.unwrapped).__name__)
        self.seed = seed
        if role == "training":
            if self._reset is None:
                raise ValueError(f"{info.name}: no same-step reset for {type(self.vec.unwrapped).__name__}; use VecEnv")
            self.reset_all()

    @staticmethod
    def available(info, history: int, training: bool = False) -> bool:
        import gymnasium as gym

        if history != 1 or info.name not in gym.registry:
            return False
        entry = gym.spec(info.name).vector_entry_point
        return entry is not None and (not training or str(entry).rsplit(":", 1)[-1] in SUBSET_RESET)

    def reset_all(self) -> None:
        obs, _ = self.vec.reset(seed=self.seed)  # seeded once; later resets continue its RNG
        self.seed = None
        self.frames = np.asarray(obs, dtype=np.float32)
        self._check("observation", self.frames, "on reset")

    def step(self, actions: np.ndarray, alive: np.ndarray | None = None):
        obs, reward, term, trunc, _ = self.vec.step(actions)
        self.steps += self.k
        frames = np.asarray(obs, dtype=np.float32)  # a fresh array every step
        reward = np.asarray(reward, dtype=np.float32)
        term, trunc = np.asarray(term), np.asarray(trunc)
        self._check("observation", frames, "after a step", alive)
        self._check("reward", reward, "after a step", alive)
        self.frames = frames
        if alive is None:
            if self._reset is None:
                raise ValueError("this NativeVecEnv is for evaluation only (no same-step reset)")
            done = term | trunc
            if done.any():
                self.frames = frames.copy()
                self.frames[done] = self._reset(self.vec.unwrapped, done)
        return frames, reward, term, trunc

    def close(self) -> None:
        self.vec.close()


class Rollout:
    """Collects `steps` transitions per copy with a categorical policy; tracks finished episodes' returns."""

    def __init__(self, venv: VecEnv, logits_net: torch.nn.Module, n_actions: int):
        self.venv, self.net, self.n = venv, logits_net, n_actions
        self.running = np.zeros(venv.k, np.float64)  # return so far of each copy's episode

    @torch.no_grad()
    def collect(self, steps: int):
        """Returns (TensorDict [K, steps] in the layout of a TorchRL Collector batch, finished returns).

        Per step only what the next env step needs: one network call on the current input and a
        Gumbel-max sample of the categorical, argmax(logits + g) with g = -log(Exp(1)) drawn for the whole
        batch at once (exact, and 2 tensor ops instead of softmax + multinomial). The log-probs of the taken
        actions are computed once per batch from the stacked logits."""
        from tensordict import TensorDict

        venv, k, n, finished = self.venv, self.venv.k, self.n, []
        shape = venv.current().shape[1:]  # [D] or [T, D]
        obs, nxt = np.empty((steps, k, *shape), np.float32), np.empty((steps, k, *shape), np.float32)
        rew, term, trunc = (np.zeros((steps, k), dt) for dt in (np.float32, bool, bool))
        gumbel = torch.empty(steps, k, n).exponential_().log_().neg_()  # [steps, K, n]
        logits_all, act = [], []
        for t in range(steps):
            obs[t] = venv.current()
            logits = self.net(torch.from_numpy(obs[t]))  # [K, n]
            a = (logits + gumbel[t]).argmax(-1)  # [K]
            logits_all.append(logits), act.append(a)
            nxt[t], rew[t], term[t], trunc[t] = venv.step(a.numpy())
            self.running += rew[t]
            done_t = term[t] | trunc[t]
            if done_t.any():
                finished += self.running[done_t].tolist()
                self.running[done_t] = 0.0
        # [steps, K, ...] -> [K, steps, ...]
        logits, a = torch.stack(logits_all, 1), torch.stack(act, 1)  # [K, steps, n], [K, steps]
        tk = lambda x: torch.from_numpy(x).transpose(0, 1).contiguous()  # noqa: E731
        flags = lambda arr: torch.from_numpy(arr.T.copy()).unsqueeze(-1)  # noqa: E731  [K, steps, 1]
        terminated, truncated = flags(term), flags(trunc)
        batch = TensorDict({
            "observation": tk(obs), "action": torch.nn.functional.one_hot(a, n),
            "action_log_prob": logits.log_softmax(-1).gather(-1, a.unsqueeze(-1)).squeeze(-1), "logits": logits,
            "next": {"observation": tk(nxt), "reward": flags(rew), "done": terminated | truncated,
                     "terminated": terminated, "truncated": truncated},
        }, batch_size=[k, steps])
        return batch, finished


@torch.no_grad()
def evaluate_greedy(venv: VecEnv, logits_net: torch.nn.Module, max_steps: int) -> tuple[np.ndarray, int]:
    """Return of one fresh episode per copy with the argmax action, and how many were still running after
    `max_steps` steps (their return so far counts). Finished copies no longer count (a NativeVecEnv still
    steps them, in the same call; a VecEnv does not)."""
    venv.reset_all()
    returns, alive = np.zeros(venv.k), np.ones(venv.k, bool)
    for _ in range(max_steps):
        a = logits_net(torch.from_numpy(venv.current())).argmax(-1).numpy()
        _, r, te, tr = venv.step(a, alive)
        returns += np.where(alive, r, 0.0)
        alive &= ~(te | tr)
        if not alive.any():
            break
    return returns, int(alive.sum())
