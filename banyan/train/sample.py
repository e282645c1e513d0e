"""`banyan sample --ckpt DIR --prompt "..."`: generate text from a checkpoint with the KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from banyan.errors import BanyanError, ConfigError
from banyan.config import parse_cli
from banyan.parallel.env import resolve_device
from banyan.train.init_from import HF_PREFIX, hf_folder, hf_model


@dataclass
class GenerationFlags:
    """How tokens are drawn; shared by `banyan sample` and `banyan chat`."""

    max_new_tokens: int = 200
    """Tokens to generate (capped by the model's context; a chat reply also stops at <|end|> or <|eos|>)."""
    temperature: float = 0.8
    """Softmax temperature; 0 = greedy."""
    top_k: int = 50
    """Keep the k most likely tokens (0 = off)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set with this much probability (1 = off)."""
    seed: int = 1337
    """Sampling seed (same seed, same text)."""
    device: str = "auto"
    """Device to run on."""

    def check(self) -> None:
        """A ConfigError naming the first flag out of range."""
        for flag, value, ok, want in (("--max_new_tokens", self.max_new_tokens, self.max_new_tokens >= 1, ">= 1"),
                                      ("--temperature", self.temperature, self.temperature >= 0, ">= 0"),
                                      ("--top_k", self.top_k, self.top_k >= 0, ">= 0 (0 = off)"),
                                      ("--top_p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]")):
            if not ok:
                raise ConfigError(f"{flag} must be {want}, got {value}")


@dataclass
class SampleConfig(GenerationFlags):
    """Generate text from a trained checkpoint."""

    ckpt: str = "runs/shakespeare"
    """A checkpoint folder, a run folder (its latest checkpoint is used), or hf:DIR (a local HF Llama/GPT-2 folder)."""
    prompt: str = "ROMEO:"
    """Text to continue."""
    num_samples: int = 1
    """How many samples to draw."""

    ranges = {"num_samples": (1, None)}  # checked by parse_cli


def load_for_inference(path: str | Path, device: torch.device):
    """(model, tokenizer, run config) from a checkpoint folder or run folder, single-process or sharded (DCP)."""
    from banyan.data.tokenizer import load_tokenizer
    from banyan.export.source import load_source

    if str(path).startswith(HF_PREFIX):
        from banyan.config import RunConfig

        folder = hf_folder(str(path))
        model = hf_model(folder)
        return model.to(device), load_tokenizer(folder / "tokenizer.json"), RunConfig(model=model.config)
    src = load_source(path)
    tok_file = src.ckpt / "tokenizer.json"
    if not tok_file.is_file():
        raise BanyanError(f"checkpoint {src.ckpt} has no tokenizer.json")
    return src.model.to(device).eval(), load_tokenizer(tok_file), src.cfg


def generate_text(model, tok, prompt: str, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                  seed: int, device: torch.device) -> str:
    ids = tok.encode(prompt)
    skip = 0
    if not ids:  # an empty prompt starts from <|bos|>, which is not part of the text shown
        ids, skip = [tok.bos_id], 1
    room = model.config.max_seq_len - len(ids)
    if room <= 0:
        raise BanyanError(f"prompt is {len(ids)} tokens; the model's context is {model.config.max_seq_len}")
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(x, max_new_tokens=min(max_new_tokens, room), temperature=temperature,
                         top_k=top_k or None, top_p=top_p if top_p < 1 else None, eos_id=tok.eos_id, generator=g)
    return tok.decode(out[0, skip:].tolist())


def main(argv: list[str]) -> int:
    cfg = parse_cli(SampleConfig, argv, prog="banyan sample")
    cfg.check()
    device = resolve_device(cfg.device, flag="--device")
    model, tok, _ = load_for_inference(cfg.ckpt, device)
    for i in range(cfg.num_samples):
        text = generate_text(model, tok, cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                             cfg.seed + i, device)
        if cfg.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        print(text)
    return 0
