"""`banyan bench generate`: decode tokens/s with the KV cache against full re-forward, at the same batch, as JSON.

    banyan bench generate --preset shakespeare --rows 8 --prompt_len 32 --new_tokens 128
    banyan bench generate --ckpt runs/sft            # a trained checkpoint instead of a random model

Both paths run banyan.model.generate.generate_batch greedily on the same random prompts (no stop
tokens, so every row decodes `new_tokens`); the figure is the best of `repeats` timings each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from banyan.config import RunConfig, parse_cli
from banyan.io import atomic_write_text


@dataclass
class BenchGenerateConfig(RunConfig):
    """Benchmark batched generation (default: the config's model, randomly initialised)."""

    ckpt: str = ""
    """A run or checkpoint folder to load instead of a random model of --model.*."""
    rows: int = 8
    """Rows decoded at once (GRPO: group_size x prompts)."""
    prompt_len: int = 32
    """Prompt tokens per row."""
    new_tokens: int = 128
    """Tokens generated per row (capped by the context)."""
    repeats: int = 2
    """Timings per path; the best is reported."""
    json_out: str = ""
    """Also write the JSON result to this file."""


def bench(cfg: BenchGenerateConfig) -> dict:
    """{kv_cache_tokens_per_s, reforward_tokens_per_s, ratio, ...} for the model of `cfg` (or --ckpt)."""
    from banyan.model import build_model
    from banyan.model.generate import generation_speed
    from banyan.parallel.env import resolve_device

    device = resolve_device(cfg.train.device, flag="--train.device")
    if cfg.ckpt:
        from banyan.export.source import load_source

        model = load_source(cfg.ckpt).model
    else:
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = 2048
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model.finalize(), device="cpu")
    model = model.to(device).eval()
    out = generation_speed(model, cfg.rows, cfg.prompt_len, cfg.new_tokens, cfg.repeats, cfg.train.seed)
    out.update(device=str(device), params=model.num_params(), n_layer=model.config.n_layer,
               d_model=model.config.d_model, threads=torch.get_num_threads())
    return out


def main(argv: list[str]) -> int:
    cfg = parse_cli(BenchGenerateConfig, argv, prog="banyan bench generate")
    text = json.dumps(bench(cfg), indent=2)
    print(text)
    if cfg.json_out:
        atomic_write_text(cfg.json_out, text + "\n")
    return 0
