"""`banyan grpo`: group-relative policy optimisation of a chat model with verifiable or learned rewards.

    banyan grpo --init SFT_RUN --grpo.task arithmetic --out DIR [--grpo.beta 0.04] [--grpo.ppo_epochs 2]
    banyan grpo --init SFT_RUN --grpo.reward mymod:score_fn ...      # a Python reward
    banyan grpo --init SFT_RUN --grpo.reward_model REWARD_RUN ...     # RLHF with a `banyan reward` model

A Task on the shared Trainer (banyan/train/trainer.py); nothing here loops over steps:

    setup     the --init chat model's tokenizer and template (refused without one), the task
              (banyan.data.reasoning), the reward source; sizes the step: prompts_per_step x
              group_size rows per rank, train.micro_batch rows per micro-batch
    batch     at micro-batch 0 of a rollout's first step: P prompts (problem indices a function of
              step and rank) x G completions generated with the KV cache (banyan.model.generate;
              RNG seeded from (seed, rollout, rank)), graded, group advantages
              (banyan.losses.grpo), old / reference log-probs stored per token when used; the
              rollout serves grpo.ppo_epochs optimizer steps and sits in the Task's state, so a
              resume in the middle of it is exact
    count     completion tokens (token-level averaging); dr_grpo: rows x max_new_tokens (a constant)
    no signal a step whose groups all have equal rewards (every advantage 0) and beta == 0 has a
              zero gradient: has_signal() is False and the Trainer skips the optimizer step
              (weights and Adam state bit-identical, no momentum / weight-decay drift; counted
              as skipped_no_signal). Tokens of all-equal groups stay in the count of a step
              that does update (TRL's token-level normalisation, not DAPO's exclusion): the step
              size then scales with the share of informative groups, a damping when a few lucky
              groups carry the whole signal, and reward / entropy logs stay over all rollouts
    loss      sum over completion tokens of the clipped surrogate + beta * KL (k1 | k3)
    evaluate  pass@1 (greedy) and pass@k (sampled) on held-out problems (banyan.eval.reasoning)
    end       OUT/plots/grpo.png: reward mean and val pass@1 against steps
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from banyan.config import RunConfig
from banyan.errors import ConfigError
from banyan.train.dpo import chat_source, stage_main
from banyan.train.task import IGNORE, Batch, Task
from banyan.train.trainer import Trainer

STATS = ("reward_mean", "reward_std", "frac_groups_equal", "completion_len", "frac_stopped")


@dataclass
class GRPOSection:
    """Online RL on a reasoning task: rollouts, rewards, advantages, KL and clipping."""

    task: str = "arithmetic"
    """Problems and verifier: arithmetic, countdown, or rg:NAME (reasoning-gym, when installed)."""
    max_digits: int = 2
    """arithmetic: digits per operand (min_digits..max_digits)."""
    min_digits: int = 1
    """arithmetic: the fewest digits per operand (= max_digits: fixed-width operands)."""
    ops: str = "+-*"
    """arithmetic: operators to draw from."""
    countdown_numbers: int = 3
    """countdown: how many numbers are given."""
    countdown_max: int = 20
    """countdown: the largest given number."""
    reward: str = ""
    """A Python reward `module:function(prompt, completion) -> float` instead of the task's verifier
    (a raise or a NaN/inf return stops the run with the function and prompt named)."""
    reward_model: str = ""
    """A `banyan reward` run or checkpoint scoring completions instead of the verifier (RLHF)."""
    system_prompt: str = ""
    """System turn put before every problem (empty: none)."""
    prompts_per_step: int = 4
    """Prompts per rollout on each rank."""
    group_size: int = 4
    """Completions per prompt (G); advantages are relative to the group."""
    max_new_tokens: int = 32
    """Length cap of a completion (it also stops at <|end|> or <|eos|>)."""
    temperature: float = 1.0
    """Sampling temperature of rollouts and of pass@k."""
    top_k: int = 0
    """Sample among the k most likely tokens (0: all)."""
    advantage: Literal["grpo", "dr_grpo", "rloo"] = "grpo"
    """grpo: (r - mean) / (std + eps); dr_grpo: r - mean, loss over a constant token count; rloo: leave-one-out."""
    kl: Literal["k1", "k3"] = "k3"
    """KL estimator to the reference: k1 = logp - logp_ref, k3 = exp(ref - logp) - (ref - logp) - 1."""
    beta: float = 0.0
    """KL weight (0: no reference model is built)."""
    clip_low: float = 0.2
    """PPO clip: ratio >= 1 - clip_low."""
    clip_high: float = 0.2
    """PPO clip: ratio <= 1 + clip_high (DAPO raises it, e.g. 0.28)."""
    ppo_epochs: int = 1
    """Optimizer steps per rollout (> 1: ratios against the rollout-time policy, clipped)."""
    eval_prompts: int = 32
    """Held-out problems for pass@1 / pass@k at each evaluation (0: none)."""
    pass_k: int = 4
    """k of pass@k (k samples per held-out problem)."""


@dataclass
class GRPOConfig(RunConfig):
    """A GRPO run: `banyan grpo --init SFT_RUN --grpo.task TASK --out DIR`."""

    grpo: GRPOSection = field(default_factory=GRPOSection)
    out: str = "runs/grpo"
    """Output folder for config.toml, metrics, plots and checkpoints."""

    ranges = {**RunConfig.ranges, "grpo.max_digits": (1, 18), "grpo.min_digits": (1, 18),
              "grpo.countdown_numbers": (2, 8),
              "grpo.countdown_max": (2, None), "grpo.prompts_per_step": (1, None), "grpo.group_size": (1, None),
              "grpo.max_new_tokens": (1, None), "grpo.temperature": (1e-6, None), "grpo.top_k": (0, None),
              "grpo.beta": (0.0, None), "grpo.clip_low": (0.0, 1.0), "grpo.clip_high": (0.0, None),
              "grpo.ppo_epochs": (1, None), "grpo.eval_prompts": (0, None), "grpo.pass_k": (1, None)}


def rollout_seed(seed: int, rollout: int, rank: int) -> int:
    """The generation RNG seed of a rollout on a rank (independent of the global RNG stream)."""
    return int(hashlib.sha256(f"grpo|{seed}|{rollout}|{rank}".encode()).hexdigest()[:15], 16)


class GRPOTask(Task):
    """GRPO on the shared Trainer (see the module docstring)."""

    name = "grpo"
    headline = ("val_pass_at_1", "val_score")

    def __init__(self, cfg: GRPOConfig):
        self.cfg, self.s = cfg, cfg.grpo
        self.policy: nn.Module | None = None  # the unwrapped model the Trainer trains (generation runs on it)
        self.ref: nn.Module | None = None
        self.reward_net: nn.Module | None = None
        self.rollout: dict | None = None

    # ------------------------------------------------------------------ set-up
    def setup(self, cfg: GRPOConfig, env) -> None:
        from banyan.data.reasoning import load_reward_function, load_task
        from banyan.eval.reasoning import stop_ids

        s, self.env = self.s, env
        self.ck, self.tokenizer, self.template = chat_source(cfg)
        self.task = load_task(s.task, cfg.train.seed, max_digits=s.max_digits, ops=s.ops, min_digits=s.min_digits,
                              n_numbers=s.countdown_numbers, max_number=s.countdown_max)
        if s.reward and s.reward_model:
            raise ConfigError("give one of --grpo.reward (a function) and --grpo.reward_model (a run), not both")
        self.reward_fn = load_reward_function(s.reward) if s.reward else None
        self.stops, self.pad = stop_ids(self.tokenizer), self.tokenizer.pad_id
        # rows are prompt + completion: train.seq_len (FLOPs, the batch size in tokens) is their longest
        cfg.train.seq_len = min(self.check_prompt_room(cfg) + s.max_new_tokens, cfg.model.max_seq_len)
        rows, mb = s.prompts_per_step * s.group_size, cfg.train.micro_batch
        if rows % mb:
            raise ConfigError(f"grpo.prompts_per_step x grpo.group_size = {rows} rows per rank must be a multiple "
                              f"of train.micro_batch ({mb})")
        n_micro = rows // mb  # the Trainer derives its accumulation from global_batch_tokens
        cfg.train.global_batch_tokens = 0 if n_micro == 1 else n_micro * mb * cfg.train.seq_len * env.world_size
        if env.is_main:
            print(f"grpo: task {self.task.name}, reward {s.reward or s.reward_model or 'the task verifier'}, "
                  f"{s.prompts_per_step} prompts x {s.group_size} completions per rank, {n_micro} micro-batches, "
                  f"beta {s.beta}" + ("" if s.beta else " (no reference model)"))

    def check_prompt_room(self, cfg) -> int:
        """The longest of the first prompts (ids); a clear error when prompts leave no room in the context."""
        from banyan.eval.reasoning import prompt_ids

        n = max(len(prompt_ids(self.tokenizer, self.template, self.task.train_problem(i).prompt, self.s.system_prompt))
                for i in range(4))
        ctx = cfg.model.max_seq_len
        if n >= ctx:
            raise ConfigError(f"grpo.task {self.task.name}: prompts take up to {n} tokens in the chat template, "
                              f"but model.max_seq_len is {ctx}: no room for a completion")
        return n

    def build_model(self, cfg) -> nn.Module:
        self.policy = super().build_model(cfg)  # the Trainer parallelizes this very module in place
        return self.policy

    def tokenizer_files(self) -> list[Path]:
        from banyan.train.init_from import init_tokenizer_files

        return init_tokenizer_files(self.ck)

    # ------------------------------------------------------------------ rollouts
    def batch(self, step: int, micro: int) -> Batch:
        from banyan.train.rollout import collate

        rid = step // self.s.ppo_epochs
        if self.rollout is None or self.rollout["id"] != rid:
            self.rollout = self.make_rollout(rid)
        mb = self.cfg.train.micro_batch
        out = collate(self.rollout["rows"][micro * mb:(micro + 1) * mb], self.pad)
        out["stats"] = torch.tensor([self.rollout["stats"][k] for k in STATS], dtype=torch.float64)
        return out

    def problems(self, rid: int) -> list:
        P = self.s.prompts_per_step
        first = (rid * self.env.world_size + self.env.rank) * P
        return [self.task.train_problem(first + j) for j in range(P)]

    def make_rollout(self, rid: int) -> dict:
        """Generate, grade and score the rollout `rid` of this rank (rows as in banyan.train.rollout)."""
        from banyan.eval.reasoning import completion_text, prompt_ids
        from banyan.losses.grpo import group_advantages
        from banyan.model.generate import generate_batch
        from banyan.train.rollout import group_stats
        from banyan.train.step import autocast_for

        s, t, dev = self.s, self.cfg.train, self.env.device
        if any(hasattr(p, "full_tensor") for p in self.policy.parameters()):
            raise ConfigError("grpo generates with the whole model on each rank: use --parallel.strategy single or ddp")
        problems = self.problems(rid)
        prompts = [prompt_ids(self.tokenizer, self.template, p.prompt, s.system_prompt) for p in problems]
        rows_in = [p for p in prompts for _ in range(s.group_size)]
        g = torch.Generator(device=dev).manual_seed(rollout_seed(t.seed, rid, self.env.rank))
        autocast = autocast_for(dev, t.dtype)
        with autocast:
            gen = generate_batch(self.policy, rows_in, s.max_new_tokens, self.stops, temperature=s.temperature,
                                 top_k=s.top_k or None, generator=g, device=dev)
        rows = [{"ids": p + c, "prompt_len": len(p), "adv": 0.0, "old": None, "ref": None}
                for p, c in zip(rows_in, gen.tokens)]
        texts = [completion_text(self.tokenizer, c) for c in gen.tokens]
        rewards = self.rewards(problems, texts, rows).view(len(problems), s.group_size)
        for r, a in zip(rows, group_advantages(rewards, s.advantage).flatten().tolist()):
            r["adv"] = a
        if s.ppo_epochs > 1:
            self.store(self.policy, rows, "old", autocast)
        if s.beta > 0:
            self.store(self.reference(), rows, "ref", autocast)
        stats = group_stats(rewards, [len(c) for c in gen.tokens], gen.stopped)
        return {"id": rid, "rows": rows, "stats": stats}

    def store(self, model, rows, key, autocast) -> None:
        from banyan.train.rollout import store_logps

        was = model.training
        model.eval()  # no dropout: the stored values are the policy's own probabilities
        try:
            store_logps(model, rows, self.pad, key, self.cfg.train.micro_batch, self.env.device, autocast,
                        self.s.temperature)
        finally:
            model.train(was)

    def reference(self) -> nn.Module:
        from banyan.train.reference import build_reference

        if self.ref is None:
            self.ref = build_reference(self.cfg, self.env, self.ck)
        return self.ref

    def rewards(self, problems, texts: list[str], rows: list[dict]) -> torch.Tensor:
        """[P * G] rewards of the completions: the reward model, the reward function, or the verifier."""
        G = self.s.group_size
        if self.s.reward_model:
            return self.model_rewards(rows)
        if self.reward_fn is not None:
            return torch.tensor([self.reward_fn(problems[i // G].prompt, x) for i, x in enumerate(texts)],
                                dtype=torch.float64)
        return torch.tensor([self.task.score(problems[i // G], x) for i, x in enumerate(texts)], dtype=torch.float64)

    @torch.no_grad()
    def model_rewards(self, rows: list[dict]) -> torch.Tensor:
        from banyan.train.reward import load_reward_model, sequence_rewards
        from banyan.train.rollout import collate

        if self.reward_net is None:
            self.reward_net = load_reward_model(self.s.reward_model, self.env.device)
        out = []
        for lo in range(0, len(rows), self.cfg.train.micro_batch):
            b = collate(rows[lo:lo + self.cfg.train.micro_batch], self.pad)
            out.append(sequence_rewards(self.reward_net, {k: v.to(self.env.device) for k, v in b.items()}))
        return torch.cat(out).double().cpu()

    # ------------------------------------------------------------------ the loss
    def count(self, batch: Batch) -> torch.Tensor:
        if self.s.advantage == "dr_grpo":  # Dr. GRPO: a constant denominator, no length normalisation
            return torch.tensor(batch["input_ids"].size(0) * self.s.max_new_tokens)
        return (batch["labels"] != IGNORE).sum()

    def has_signal(self, batches: list[Batch]) -> bool:
        """Any non-zero advantage (a group with unequal rewards), or a KL term (beta > 0) to follow."""
        return self.s.beta > 0 or any(bool((b["adv"] != 0).any()) for b in batches)

    def loss(self, model: nn.Module, batch: Batch):
        from banyan.losses.grpo import clipped_surrogate, kl_per_token
        from banyan.train.rollout import token_logps

        s = self.s
        mask = (batch["labels"] != IGNORE).float()
        logp, entropy = token_logps(model, batch, with_entropy=True, temperature=s.temperature)
        old = batch["old_logp"] if s.ppo_epochs > 1 else logp.detach()
        sur = clipped_surrogate(logp, old, batch["adv"][:, None], s.clip_low, s.clip_high)
        per_token = sur.loss
        if s.beta > 0:
            kl = kl_per_token(logp, batch["ref_logp"], s.kl)
            per_token = per_token + s.beta * kl
        loss_sum = (per_token * mask).sum()
        count = self.count(batch).to(logp.device).double()
        n_tok = mask.sum().clamp(min=1.0).double()
        # per-token means scaled so that the Trainer's division by the global count gives them back
        scale = (count / n_tok).float()
        metrics = {"entropy": (entropy * mask).sum() * scale, "clip_frac": (sur.clipped.float() * mask).sum() * scale}
        if s.beta > 0:
            metrics["kl"] = (kl.detach() * mask).sum() * scale
        metrics.update({k: v * count for k, v in zip(STATS, batch["stats"].double())})
        return loss_sum, count, metrics

    # ------------------------------------------------------------------ evaluation and state
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from banyan.eval.reasoning import pass_sums, sampled_key
        from banyan.train.step import all_reduce_sum, autocast_for

        s, env = self.s, self.env
        if not s.eval_prompts:
            return {}
        if any(hasattr(p, "full_tensor") for p in self.policy.parameters()):
            raise ConfigError("grpo evaluates with the whole model on each rank: use --parallel.strategy single or ddp")
        mine = self.task.held_out(s.eval_prompts)[env.rank::env.world_size]
        sums = pass_sums(self.policy, self.tokenizer, self.template, self.task, mine, s.pass_k, s.temperature,
                         s.max_new_tokens, self.cfg.train.seed, s.system_prompt,
                         autocast_for(env.device, self.cfg.train.dtype), env.device)
        keys = ("n", "pass1", "passk", "score")
        tot = all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=env.device)).tolist()
        n = max(tot[0], 1.0)
        return {"val_pass_at_1": tot[1] / n, "val_" + sampled_key(s.pass_k): tot[2] / n, "val_score": tot[3] / n}

    def sample(self, raw_model: nn.Module, step: int) -> str | None:
        """The first held-out problem, the greedy reply and its grade."""
        from banyan.eval.reasoning import greedy_replies

        p = self.task.held_out(1)[0]
        reply = greedy_replies(raw_model, self.tokenizer, self.template, [p], self.s.max_new_tokens,
                               self.s.system_prompt, self.env.device)[0]
        return f"{p.prompt}\n-> {reply!r} (grade {self.task.score(p, reply):g}, answer {p.answer})"

    def state_dict(self) -> dict:
        # a rollout serving several steps must survive a resume; a one-step rollout is regenerated anyway
        return {"rollout": self.rollout} if self.s.ppo_epochs > 1 and self.rollout is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self.rollout = state.get("rollout")


def plot_curves(out: Path) -> Path | None:
    """OUT/plots/grpo.png: rollout reward mean (+- std) and held-out pass@1 against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from banyan.io import save_figure
    from banyan.logger import read_metrics

    rows = [r for r in read_metrics(out / "metrics.jsonl") if r.get("kind") == "train"]
    rew = [r for r in rows if r.get("reward_mean") is not None]
    val = [r for r in rows if r.get("val_pass_at_1") is not None]
    if not rew and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rew], [r["reward_mean"] for r in rew], label="rollout reward (mean)")
    ax.plot([r["step"] for r in val], [r["val_pass_at_1"] for r in val], "o-", label="held-out pass@1 (greedy)")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{out.name}: GRPO")
    fig.tight_layout()
    return save_figure(fig, out / "plots" / "grpo.png")


def train(cfg: GRPOConfig) -> dict:
    """Run (or resume) a GRPO job; returns the summary dict (with samples/s, the rollout rows per second)."""
    from banyan.io import atomic_write_json

    trainer = Trainer(cfg, GRPOTask(cfg), stage="grpo")
    summary = trainer.run()
    s = cfg.grpo
    rows = summary["step"] * s.prompts_per_step * s.group_size * trainer.env.world_size  # wall_s spans resumes too
    summary["samples_per_s"] = rows / max(summary["wall_s"], 1e-9)
    if trainer.env.is_main:
        if cfg.log.plots and (png := plot_curves(Path(trainer.out))) is not None:
            summary["grpo_plot"] = str(png)
        atomic_write_json(Path(trainer.out) / "summary.json", summary, indent=1)
    return summary


def main(argv: list[str]) -> int:
    return stage_main(GRPOConfig, "grpo", train, argv)
