"""`banyan dpo`: direct preference optimisation (DPO, IPO, SimPO) of a chat model, as a Task.

    banyan dpo --init SFT_RUN --dpo.data PREFS --out DIR [--dpo.loss sigmoid|ipo|simpo] [--dpo.ref_cache]

The stage runs on the shared Trainer (banyan/train/trainer.py):

    setup       the --init source's tokenizer and chat template; preference pairs (banyan.data.prefs)
                encoded once and split into train / held-out (banyan.train.pairs)
    batch       B pairs = 2B rows (chosen, then rejected), labels IGNORE outside the final assistant turn
    count       pairs: the Trainer divides the loss and every metric sum by the global pair count
    loss        policy log-probs of both responses vs the frozen reference's (banyan.train.reference):
                a reference held in memory, or its log-probs from the on-disk cache (dpo.ref_cache),
                or none for simpo -> banyan.losses.preference; metrics: reward accuracy, chosen /
                rejected rewards, margin (sums over pairs)
    evaluate    the same loss and metrics on the held-out pairs (val_*)
"""

from __future__ import annotations

import abc
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from banyan.config import RunConfig, parse_cli
from banyan.errors import ConfigError, DataError
from banyan.train.task import Batch, Task
from banyan.train.trainer import Trainer


@dataclass
class PairDataSection:
    """Preference pairs and their held-out split (shared by the dpo and reward sections)."""

    data: str = ""
    """Preference pairs: .jsonl/.json/.parquet file or folder, hf:NAME, or shakespeare-pairs (embedded;
    see banyan.data.prefs)."""
    val_data: str = ""
    """Held-out pairs; empty holds out val_fraction of `data` (shakespeare-pairs: its held-out plays)."""
    val_fraction: float = 0.1
    """Fraction of `data` held out for evaluation when val_data is empty (0: no held-out pairs)."""
    hf_split: str = "train"
    """Split of an hf: source (val_data reads the same split of its own source)."""
    max_pairs: int = 0
    """Read at most this many pairs from `data` (0: all)."""
    max_val_pairs: int = 0
    """Read at most this many pairs from `val_data` (or shakespeare-pairs' held-out plays; 0: all)."""


@dataclass
class DPOSection(PairDataSection):
    """Preference optimisation."""

    loss: Literal["sigmoid", "ipo", "simpo"] = "sigmoid"
    """sigmoid: DPO (Rafailov et al. 2023); ipo: Azar et al. 2023; simpo: reference-free (Meng et al. 2024)."""
    beta: float = 0.1
    """Inverse temperature of the implicit reward (SimPO's paper uses about 2.0)."""
    label_smoothing: float = 0.0
    """cDPO / robust DPO: the probability that a preference label is flipped (sigmoid and simpo)."""
    gamma: float = 0.5
    """SimPO target reward margin."""
    nll_alpha: float = 0.0
    """Weight of the chosen response's mean NLL added to each pair's loss (RPO; 0: off)."""
    ref_cache: bool = False
    """Score every pair with the reference once and cache the log-probs on disk instead of holding it in memory."""
    cache_dir: str = ""
    """Folder of reference log-prob caches (empty: OUT/ref_cache); each file is named by a hash of
    the data, the chat template and the reference weights."""


@dataclass
class DPOConfig(RunConfig):
    """A preference optimisation run: `banyan dpo --init SFT_RUN --dpo.data PREFS --out DIR`."""

    dpo: DPOSection = field(default_factory=DPOSection)
    out: str = "runs/dpo"
    """Output folder for config.toml, metrics, plots and checkpoints."""


def pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over pairs of: reward accuracy (chosen above rejected), chosen / rejected rewards, margin."""
    return {"reward_accuracy": (chosen_rewards > rejected_rewards).float().sum(),
            "chosen_reward": chosen_rewards.sum(), "rejected_reward": rejected_rewards.sum(),
            "margin": (chosen_rewards - rejected_rewards).sum()}


def open_pairs(cfg, section, tok, template: str, flag: str = "dpo"):
    """(train PairData, held-out PairData or None) from section.data / val_data / val_fraction."""
    from banyan.data.dialogue import PAIRS_SOURCE
    from banyan.data.prefs import load_pairs
    from banyan.train.pairs import PairData, split_pairs

    if not section.data:
        raise ConfigError(f"no preference data: pass --{flag}.data PREFS (.jsonl/.json/.parquet or hf:NAME)")
    pairs = load_pairs(section.data, split=section.hf_split, max_pairs=section.max_pairs)
    if section.data == PAIRS_SOURCE and not section.val_data:  # the embedded pairs hold out whole plays
        train, val = pairs, load_pairs(PAIRS_SOURCE, split="val", max_pairs=section.max_val_pairs)
    elif section.val_data:
        train, val = pairs, load_pairs(section.val_data, split=section.hf_split, max_pairs=section.max_val_pairs)
    else:
        train, val = split_pairs(pairs, section.val_fraction)
    pad = tok.pad_id
    make = lambda ps, name: PairData(ps, tok, template, cfg.train.seq_len, pad, name)  # noqa: E731
    return make(train, "train"), (make(val, "held-out") if val else None)


def chat_source(cfg) -> tuple[Path, object, str]:
    """(--init checkpoint, its tokenizer, its chat template); a clear error when it is not a chat model."""
    from banyan.data.chat_template import load_chat_template
    from banyan.data.tokenizer import load_tokenizer
    from banyan.train.init_from import init_checkpoint

    if not cfg.init:
        raise ConfigError("this stage starts from a trained chat model: pass --init SFT_RUN "
                          "(a run or checkpoint folder)")
    ck = init_checkpoint(cfg.init)
    try:
        template = load_chat_template(ck)
    except DataError as e:
        raise DataError(f"--init {cfg.init}: not a chat model ({e})") from None
    if not chat_trained(ck):
        print(f"warning: --init {cfg.init} was never trained on chats (its config.toml has no sft, dpo, grpo or "
              "reward section): its tokenizer has the template, but the model has not learnt turns; "
              "starting from it anyway (an R1-Zero-style start)", file=sys.stderr)
    return ck, load_tokenizer(ck), template


def chat_trained(ck: Path) -> bool:
    """Whether a banyan checkpoint came from a chat stage (sft / dpo / grpo / reward); True when unknown (HF)."""
    import tomllib

    path = ck / "config.toml"
    if not path.is_file():
        return True  # an HF folder: its own card says what it is
    try:
        sections = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return True  # load_init reports a broken checkpoint with its own error
    return any(k in sections for k in ("sft", "dpo", "grpo", "reward"))


class PairTask(Task):
    """What DPO and the reward model share: the chat source, the pairs, their batches and pair counts."""

    section_name = "dpo"
    headline = ("val_loss", "val_reward_accuracy")

    def __init__(self, cfg):
        self.cfg, self.env = cfg, None
        self.section = getattr(cfg, self.section_name)

    def setup(self, cfg, env) -> None:
        self.env = env
        self.ck, self.tokenizer, self.template = chat_source(cfg)
        self.train_data, self.val_data = open_pairs(cfg, self.section, self.tokenizer, self.template,
                                                     self.section_name)
        if env.is_main:
            print(f"{self.name}: {len(self.train_data)} training pairs, "
                  f"{len(self.val_data) if self.val_data else 0} held out")

    def batch(self, step: int, micro: int) -> Batch:
        from banyan.train.pairs import pair_indices

        t = self.cfg.train
        idx = pair_indices(len(self.train_data), step, micro, self.cfg.grad_accum(self.env.world_size),
                           self.env.rank, self.env.world_size, t.micro_batch, t.seed)
        return self.train_data.collate(idx)

    def count(self, batch: Batch) -> torch.Tensor:
        return torch.tensor(batch["input_ids"].size(0) // 2)

    def tokenizer_files(self) -> list[Path]:
        from banyan.train.init_from import init_tokenizer_files

        return init_tokenizer_files(self.ck)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The loss and metrics over the held-out pairs, prefixed val_ (collective across ranks)."""
        from banyan.eval.lm import held_out_sums
        from banyan.train.pairs import val_index_batches
        from banyan.train.step import autocast_for

        if self.val_data is None:
            return {}
        t, dev = self.cfg.train, self.env.device
        batches = (self.val_data.collate(idx) for idx in val_index_batches(
            len(self.val_data), t.micro_batch, t.eval_batches, self.env.rank, self.env.world_size))
        n, sums = held_out_sums(model, batches, lambda m, b: self.pair_loss(m, b, split="val"), dev,
                                autocast_for(dev, t.dtype))
        return {f"val_{k}": v / max(n, 1.0) for k, v in sums.items()}

    def loss(self, model: nn.Module, batch: Batch):
        return self.pair_loss(model, batch, split="train")

    @abc.abstractmethod
    def pair_loss(self, model: nn.Module, batch: Batch, split: str):
        """(loss sum over the batch's pairs, pair count, {metric: sum over pairs}); `split` picks cached values."""


class DPOTask(PairTask):
    """DPO / IPO / SimPO on preference pairs; the reference is the --init model, frozen."""

    name = "dpo"

    def __init__(self, cfg: DPOConfig):
        super().__init__(cfg)
        self.ref: nn.Module | None = None  # in-memory reference, built on first use (after the policy)
        self.ref_logps: dict[str, torch.Tensor] | None = None  # {split: [N, 2]} from the cache
        self.needs_ref = self.section.loss != "simpo"

    def reference_logps(self, batch: Batch, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(reference chosen, rejected) log-probs [B] of the batch: from the cache or the model in memory."""
        from banyan.train.reference import build_reference, sequence_logps

        if self.section.ref_cache:
            if self.ref_logps is None:
                self.ref_logps = self.cached_reference()
            pair = self.ref_logps[split].to(batch["input_ids"].device)[batch["pair_index"]]  # [B, 2]
            return pair[:, 0], pair[:, 1]
        if self.ref is None:
            self.ref = build_reference(self.cfg, self.env, self.ck)
        with torch.no_grad():
            logps, _ = sequence_logps(self.ref, batch, self.cfg.train.chunked_loss)
        return logps.detach().chunk(2)

    def cached_reference(self) -> dict[str, torch.Tensor]:
        """Reference log-probs of every pair: read from the cache when its key matches, else scored and written."""
        from banyan.train.reference import (RefCache, build_reference, data_fingerprint, score_pairs,
                                            weights_fingerprint)
        from banyan.train.step import autocast_for

        t = self.cfg.train
        ref = build_reference(self.cfg, self.env, self.ck)
        splits = {"train": self.train_data, **({"val": self.val_data} if self.val_data else {})}
        dtype = f"{self.env.device.type}:{t.dtype}"  # bf16 on CUDA scores differently from fp32 on CPU
        key = hashlib.sha256((data_fingerprint(self.template, splits, t.seq_len, dtype)
                              + weights_fingerprint(ref)).encode()).hexdigest()
        cache = RefCache(Path(self.section.cache_dir or Path(self.cfg.out) / "ref_cache"), key)
        self.cache_reused = (found := cache.load()) is not None
        if found is None:
            autocast = autocast_for(self.env.device, t.dtype)
            found = {name: score_pairs(ref, data, t.micro_batch, t.chunked_loss, autocast, self.env.device)
                     for name, data in splits.items()}
            if self.env.is_main:
                cache.save(found)
        if self.env.is_main:
            print(f"dpo: reference log-probs {'read from' if self.cache_reused else 'written to'} {cache.path}")
        del ref  # the reference leaves memory: training reads the cache
        return found

    def pair_loss(self, model: nn.Module, batch: Batch, split: str):
        from banyan.losses.preference import preference_loss
        from banyan.train.reference import sequence_logps

        s = self.section
        logps, lengths = sequence_logps(model, batch, self.cfg.train.chunked_loss)
        (pc, pr), (lc, lr) = logps.chunk(2), lengths.chunk(2)
        rc, rr = self.reference_logps(batch, split) if self.needs_ref else (None, None)
        out = preference_loss(s.loss, pc, pr, lc.float(), lr.float(), rc, rr, beta=s.beta,
                              label_smoothing=s.label_smoothing, gamma=s.gamma, nll_alpha=s.nll_alpha)
        return out.losses.sum(), torch.tensor(pc.numel()), pair_metrics(out.chosen_rewards, out.rejected_rewards)


def train(cfg: DPOConfig) -> dict:
    """Run (or resume) a DPO job; returns the final summary dict."""
    return Trainer(cfg, DPOTask(cfg), stage="dpo").run()


def stage_main(cls, verb: str, train_fn, argv: list[str]) -> int:
    """`banyan VERB ...`: parse `cls` from argv, relaunch under torchrun for --nproc N, else run `train_fn(cfg)`."""
    from banyan.parallel.launch import alias_nproc, launch_torchrun

    argv = alias_nproc(argv)  # `--nproc N` is short for `--parallel.nproc N`
    cfg = parse_cli(cls, argv, prog=f"banyan {verb}")
    if cfg.parallel.nproc > 0 and "LOCAL_RANK" not in os.environ:
        return launch_torchrun(cfg.parallel.nproc, [verb, *argv])
    train_fn(cfg)
    return 0


def main(argv: list[str]) -> int:
    return stage_main(DPOConfig, "dpo", train, argv)
