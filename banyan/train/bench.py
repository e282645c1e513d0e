"""`banyan bench train`: steady-state training throughput as JSON (tokens/s, ms/step, MFU, memory).

Runs `warmup` steps (compile, allocator warm-up), then times `steps` steps of the same shared
train step the trainer uses, on random tokens (no data folder needed).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from banyan.config import ConfigError, RunConfig, parse_cli, to_dict
from banyan.io import atomic_write_text
from banyan.parallel.env import DistEnv
from banyan.train.metrics import peak_flops_for, peak_memory_mb
from banyan.train.step import autocast_for, train_step


@dataclass
class BenchTrainConfig(RunConfig):
    """Benchmark the training step of a config (defaults: the shakespeare preset)."""

    warmup: int = 3
    """Untimed steps first (compilation, allocator)."""
    steps: int = 10
    """Timed steps."""
    json_out: str = ""
    """Also write the JSON result to this file."""

    ranges = {**RunConfig.ranges, "warmup": (0, None), "steps": (1, None)}  # checked by parse_cli


def bench(cfg: BenchTrainConfig) -> dict:
    from banyan.train.lm import causal_lm_loss
    from banyan.train.task import labelled_count
    from banyan.train.trainer import build_parallel

    env = DistEnv.from_env(cfg.train.device)
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = 2048
    cfg.finalize()
    torch.manual_seed(cfg.train.seed)
    par, opt = build_parallel(cfg, env)  # the Trainer's own set-up: meta build, parallelize, init
    n_micro = cfg.grad_accum(env.world_size)
    autocast = autocast_for(env.device, cfg.train.dtype)
    B, T, V = cfg.train.micro_batch, cfg.train.seq_len, cfg.model.vocab_size
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, V, (n_micro, B, T + 1), generator=g).to(env.device)
    batches = [{"input_ids": data[m, :, :-1], "labels": data[m, :, 1:]} for m in range(n_micro)]

    def loss_fn(model, batch):
        return causal_lm_loss(model, batch, cfg.train.chunked_loss)

    def one_step():
        r = train_step(par.model, opt, batches, loss_fn, labelled_count,
                       cfg.train.grad_clip, autocast, par.no_sync)
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        return r

    for _ in range(cfg.warmup):
        one_step()
    if env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(cfg.steps):
        t0 = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - t0)
    tokens = n_micro * B * T * env.world_size
    ms = statistics.median(times) * 1000
    tps = tokens / (ms / 1000)
    peak = peak_flops_for(env.device, cfg.train.dtype) * env.world_size
    result = {
        "strategy": par.strategy, "is_main": env.is_main,
        "device": torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu",
        "world_size": env.world_size, "params": par.raw.num_params(), "tokens_per_step": tokens,
        "ms_per_step": round(ms, 2), "ms_per_step_min": round(min(times) * 1000, 2),
        "tokens_per_s": round(tps, 1), "mfu": round(par.raw.flops_per_token(T) * tps / peak, 4),
        "peak_flops": peak, "peak_mem_mb": round(peak_memory_mb(env.device), 1),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "config": to_dict(cfg),
    }
    env.close()
    return result


def main(argv: list[str]) -> int:
    cfg = parse_cli(BenchTrainConfig, argv, prog="banyan bench train", default_preset="shakespeare")
    if cfg.json_out and Path(cfg.json_out).is_dir():  # before the benchmark, not after it
        raise ConfigError(f"--json_out '{cfg.json_out}' is a folder; give a file name, e.g. {cfg.json_out}/bench.json")
    result = bench(cfg)
    if not result.pop("is_main"):
        return 0  # under torchrun only rank 0 reports
    text = json.dumps(result, indent=1)
    print(text)
    if cfg.json_out:
        atomic_write_text(cfg.json_out, text + "\n")
    return 0
