"""Helpers for export tests: tiny banyan checkpoints (single-process or sharded DCP) with a tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from banyan.config import ModelConfig, RunConfig, load_config, write_config

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish? 1234 apples, 56.7%!\n\n") * 20
# held-out text: unseen characters (byte fallback for the char tokenizer), digits, tabs, a multi-byte emoji
PROBE = "Second Citizen:\tWe are accounted poor citizens, the patricians good. 9876 \u00e9t\u00e9 \u2603 \U0001F600\n"
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def make_tokenizer(kind: str, folder: Path, chat: bool = False) -> Path:
    """Train a char or bpe:300 tokenizer on TEXT into `folder`; with `chat`, a tokenizer_config.json beside it."""
    from banyan.data.tokenizer import Tokenizer

    tok = Tokenizer.train_char([TEXT]) if kind == "char" else Tokenizer.train_bpe([TEXT], 300)
    path = tok.save(folder)
    if chat:
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"chat_template": CHAT_TEMPLATE, "eos_token": "<|end|>", "bos_token": "<|bos|>", "pad_token": "<|pad|>"}))
    return path


def tiny_model(arch: str, vocab_size: int, tie: bool, n_kv_head: int = 0, seed: int = 0, bias: bool = True):
    """A 2-layer model with every weight randomised (norm gains too, so a mis-mapped tensor shows)."""
    from banyan.model import build_model

    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, vocab_size=vocab_size, n_layer=2, n_head=4, n_kv_head=n_kv_head, d_model=32,
                      max_seq_len=64, tie_embeddings=tie, bias=bias,
                      rope_theta=5000.0 if arch == "llama" else 10000.0)  # gpt2 has no RoPE
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def run_config(model, data: Path) -> RunConfig:
    cfg = load_config(RunConfig, overrides={"data": {"path": str(data)}, "out": "runs/tiny",
                                             "train": {"seq_len": 32, "max_steps": 7}})
    cfg.model = model.config
    return cfg


def save_single(run_dir: Path, model, tokenizer_file: Path, step: int = 7, tokens: int = 7168) -> Path:
    """A `banyan pretrain`-style checkpoint plus the run's summary.json and metrics.jsonl."""
    from banyan.train.checkpoint import save_checkpoint

    cfg = run_config(model, tokenizer_file.parent)
    path = save_checkpoint(run_dir, step, model, None, {"tokens": tokens, "bad_in_row": 0}, cfg, tokenizer_file)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 4, "val_bpb": 3.5}) + "\n" +
                                           json.dumps({"step": step, "val_bpb": 2.25}) + "\n")
    return path


def save_sharded(run_dir: Path, model, tokenizer_file: Path, step: int = 5) -> Path:
    """A checkpoint as multi-process runs write it: dcp/ (written by DCP in this one process), no safetensors."""
    import warnings

    import torch.distributed.checkpoint as dcp

    from banyan.train.checkpoint import copy_tokenizer, publish_checkpoint

    root = run_dir / "checkpoints"
    tmp, final = root / f"step_{step:06d}.tmp-dcp", root / f"step_{step:06d}"
    tmp.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(tmp / "dcp"))
    write_config(run_config(model, tokenizer_file.parent), tmp / "config.toml")
    copy_tokenizer(tokenizer_file, tmp)
    (tmp / "trainer.json").write_text(json.dumps({"step": step, "tokens": 5120, "format": "dcp"}))
    return publish_checkpoint(tmp, final, run_dir, keep_last=2)
