"""`banyan pretrain`: train a Llama or GPT-2 model from scratch on prepared token shards.

Pretraining is a Task on the shared Trainer (banyan/train/trainer.py):

    setup       open the prepared folder: tokenizer, train/val TokenLoaders (vocab size from the data)
    batch       TokenLoader.batch(step, micro): windows of seq_len+1 tokens, a pure function of the step
    loss        summed next-token cross-entropy over every position (chunked when train.chunked_loss)
    evaluate    val loss and exact bits per byte over fixed held-out windows (banyan.eval.lm)
    sample      text from train.sample_prompt (default: the opening of the first held-out window)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from banyan.config import RunConfig, parse_cli
from banyan.errors import BanyanError
from banyan.parallel.env import DistEnv
from banyan.train.lm import LMTask
from banyan.train.trainer import Trainer


def open_data(cfg: RunConfig, env: DistEnv):
    """Train/val loaders + tokenizer; fills model.vocab_size from the data when it is 0."""
    from banyan.data.loader import TokenLoader
    from banyan.data.tokenizer import load_tokenizer
    from banyan.train.init_from import check_init_tokenizer

    path = Path(cfg.data.path)
    if not (path / "meta.json").is_file():
        raise BanyanError(f"data folder '{path}' is missing or not prepared (no meta.json); "
                          f"run: banyan data prepare --out {path}")
    tok = load_tokenizer(path)
    check_init_tokenizer(cfg.init, tok, f"data folder '{path}'")
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = tok.vocab_size
    elif cfg.model.vocab_size < tok.vocab_size:
        raise BanyanError(f"model.vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"{tok.vocab_size} in '{path}' (data made for another tokenizer?)")
    common = dict(seq_len=cfg.train.seq_len, micro_batch=cfg.train.micro_batch, seed=cfg.train.seed,
                  rank=env.rank, world_size=env.world_size, expect_vocab=tok.vocab_size)
    return TokenLoader(path, "train", **common), TokenLoader(path, "val", **common), tok


class PretrainTask(LMTask):
    """Next-token prediction on every position of fixed windows of prepared token shards."""

    name = "pretrain"

    def setup(self, cfg: RunConfig, env: DistEnv) -> None:
        self.env = env
        self.train_loader, self.val_loader, self.tokenizer = open_data(cfg, env)
        self.token_bytes = torch.as_tensor(self.tokenizer.token_bytes(), dtype=torch.long, device=env.device)

    def batch(self, step: int, micro: int):
        x, y = self.train_loader.batch(step, micro)  # [B, T] each
        return {"input_ids": x, "labels": y}

    def val_batches(self):
        return ({"input_ids": x, "labels": y} for x, y in self.val_loader.val_batches(self.cfg.train.eval_batches))

    def sample(self, raw_model, step: int) -> str | None:
        from banyan.train.sample import generate_text

        t = self.cfg.train
        first = next(iter(self.val_loader.val_batches(1)))[0][0, :8]  # [8] ids opening the held-out text
        prompt = t.sample_prompt or self.tokenizer.decode(first.tolist())
        return generate_text(raw_model, self.tokenizer, prompt, t.sample_tokens, temperature=0.8, top_k=50,
                             top_p=1.0, seed=t.seed, device=self.env.device)

    def tokenizer_files(self) -> list[Path]:
        return [Path(self.cfg.data.path) / "tokenizer.json"]


def train(cfg: RunConfig) -> dict:
    """Run (or resume) a pretraining job; returns the final summary dict."""
    return Trainer(cfg, PretrainTask(cfg), stage="pretrain").run()


def main(argv: list[str]) -> int:
    from banyan.parallel.launch import alias_nproc, launch_torchrun

    argv = alias_nproc(argv)  # `--nproc N` is short for `--parallel.nproc N`
    cfg = parse_cli(RunConfig, argv, prog="banyan pretrain", default_preset="shakespeare")
    if cfg.parallel.nproc > 0 and "LOCAL_RANK" not in os.environ:
        return launch_torchrun(cfg.parallel.nproc, ["pretrain", *argv])
    train(cfg)
    return 0
