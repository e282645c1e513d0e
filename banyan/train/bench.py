"""`banyan bench train`: steady-state training throughput as JSON (tokens/s, ms/step, MFU, memory).

Runs `warmup` steps (compile, allocator warm-up), then times `steps` steps of the same shared
train step the trainer uses, on random tokens (no data folder needed). `--compare hf` also times HF
transformers' model of the same shapes in the same process, interleaved round by round, and reports
banyan's tokens/s over the peer's per round (median and spread):

    banyan bench train --preset gpt2-124m --optim.name adamw --compare hf --rounds 5
    banyan bench train --profile 15        # + the top operators by self time, ms per step
    OMP_NUM_THREADS=1 banyan bench train --clock cpu   # CPU time per step: on a machine other jobs share

"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    """Timed steps (per round with --compare)."""
    compare: Literal["", "hf"] = ""
    """hf: also time HF transformers' LlamaForCausalLM / GPT2LMHeadModel of the same shapes, dtype and
    optimizer (AdamW) in this process, interleaved with banyan's step round by round, and report the ratio."""
    rounds: int = 3
    """--compare: interleaved rounds (banyan's steps, then the peer's); the ratio's spread is over rounds."""
    json_out: str = ""
    """Also write the JSON result to this file."""
    clock: Literal["wall", "cpu"] = "wall"
    """Step timer: wall (perf_counter) or cpu (this process's CPU time, all its threads: steadier than wall
    time on a machine other jobs share, best with OMP_NUM_THREADS=1; CPU devices only)."""
    profile: int = 0
    """Also run torch.profiler over the timed steps and report this many top operators by self time
    (ms per step, share of the step) under "profile", plus a table on stderr: where the time goes."""

    ranges = {**RunConfig.ranges, "warmup": (0, None), "steps": (1, None), "rounds": (1, None),
              "profile": (0, None)}  # checked by parse_cli


def timed(step, n: int, cuda: bool, clock=time.perf_counter) -> list[float]:
    """Seconds of each of n calls of `step` (synchronised on CUDA) by `clock`."""
    times = []
    for _ in range(n):
        t0 = clock()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(clock() - t0)
    return times


def profile_ops(step, n: int, top: int, cuda: bool) -> list[dict]:
    """The `top` operators by self time over n calls of `step`: [{op, ms_per_step, share, calls_per_step}].

    Self time (not total) so that nested ops are not counted twice; on CUDA the device time is used.
    Share is of the summed self time of all operators, which is the step's time seen by the profiler.
    """
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        timed(step, n, cuda)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [{"op": e.key, "ms_per_step": round(getattr(e, key) / 1e3 / n, 3),
             "share": round(getattr(e, key) / total, 4), "calls_per_step": round(e.count / n, 1)}
            for e in events[:top]]


def profile_table(rows: list[dict]) -> str:
    """A fixed-width table of profile_ops rows."""
    lines = [f"{'operator':<58} {'ms/step':>9} {'share':>7} {'calls':>7}"]
    lines += [f"{r['op'][:58]:<58} {r['ms_per_step']:>9.3f} {100 * r['share']:>6.1f}% {r['calls_per_step']:>7.1f}"
              for r in rows]
    return "\n".join(lines)


def hf_step(mc, cfg: BenchTrainConfig, dev: torch.device):
    """(step closure, transformers version): HF's model of banyan's shapes (banyan.model.hf.config_to_hf),
    trained the way banyan's step trains: the same autocast, fused AdamW with the same lr/betas/decay,
    clipping at train.grad_clip, random tokens of the same micro-batch (HF shifts labels inside)."""
    import copy

    import transformers

    from banyan.model.hf import config_to_hf

    torch.manual_seed(cfg.train.seed)
    model = transformers.AutoModelForCausalLM.from_config(config_to_hf(copy.deepcopy(mc)),
                                                          attn_implementation="sdpa").to(dev)
    o = cfg.optim
    # fused, as banyan's own AdamW and HF Trainer's default optimizer since torch 2.8 (adamw_torch_fused)
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay,
                            fused=True)
    fwd = torch.compile(model) if cfg.train.compile else model
    x = torch.randint(0, mc.vocab_size, (cfg.train.micro_batch, cfg.train.seq_len), device=dev)
    autocast = autocast_for(dev, cfg.train.dtype)

    def step():
        with autocast:
            loss = fwd(input_ids=x, labels=x).loss
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, transformers.__version__


def compare_hf(cfg: BenchTrainConfig, ours, dev: torch.device, tokens: int, clock=time.perf_counter) -> dict:
    """Interleaved rounds of banyan's step and HF's: {hf: ..., ratio per round, median, spread}."""
    theirs, version = hf_step(cfg.model, cfg, dev)
    cuda = dev.type == "cuda"
    timed(theirs, cfg.warmup, cuda)
    rounds = []
    for _ in range(cfg.rounds):
        mine_ms = statistics.median(timed(ours, cfg.steps, cuda, clock)) * 1e3
        hf_ms = statistics.median(timed(theirs, cfg.steps, cuda, clock)) * 1e3
        rounds.append({"banyan_ms": round(mine_ms, 2), "hf_ms": round(hf_ms, 2), "ratio": round(hf_ms / mine_ms, 3)})
    ratios = [r["ratio"] for r in rounds]
    hf_ms = statistics.median(r["hf_ms"] for r in rounds)
    return {"peer": f"transformers {version}", "peer_ms_per_step": hf_ms,
            "peer_tokens_per_s": round(tokens / (hf_ms / 1e3), 1), "rounds": rounds,
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratio_is": "banyan tokens/s / peer tokens/s (> 1: banyan is faster)"}


def bench(cfg: BenchTrainConfig) -> dict:
    from banyan.train.lm import causal_lm_loss
    from banyan.train.task import labelled_count
    from banyan.train.trainer import build_parallel

    env = DistEnv.from_env(cfg.train.device)
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = 2048
    if cfg.compare and (env.world_size > 1 or cfg.optim.name != "adamw" or cfg.grad_accum(1) != 1):
        raise ConfigError("--compare hf times one process, one micro-batch per step and AdamW on both sides: "
                          "pass --optim.name adamw and no --nproc / --train.global_batch_tokens")
    if cfg.compare and cfg.model.arch == "gpt2" and not cfg.model.bias:
        raise ConfigError("--compare hf with model.bias false: HF's GPT2LMHeadModel always has biases, so the two "
                          "steps would not be the same model; drop --model.no_bias")
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
        return train_step(par.model, opt, batches, loss_fn, labelled_count, cfg.train.grad_clip, autocast, par.no_sync)

    cuda = env.device.type == "cuda"
    clock = time.process_time if cfg.clock == "cpu" and not cuda else time.perf_counter
    timed(one_step, cfg.warmup, cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = timed(one_step, cfg.steps, cuda, clock)
    tokens = n_micro * B * T * env.world_size
    ms = statistics.median(times) * 1000
    tps = tokens / (ms / 1000)
    peak = peak_flops_for(env.device, cfg.train.dtype) * env.world_size
    result = {
        "strategy": par.strategy, "is_main": env.is_main,
        "device": torch.cuda.get_device_name(env.device) if cuda else "cpu",
        "world_size": env.world_size, "params": par.raw.num_params(), "tokens_per_step": tokens,
        "ms_per_step": round(ms, 2), "ms_per_step_min": round(min(times) * 1000, 2),
        "tokens_per_s": round(tps, 1), "mfu": float(f"{par.raw.flops_per_token(T) * tps / peak:.3g}"),
        "peak_flops": peak, "peak_mem_mb": round(peak_memory_mb(env.device), 1),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "config": to_dict(cfg),
    }
    if cfg.profile:
        result["profile"] = profile_ops(one_step, cfg.steps, cfg.profile, cuda)
    if cfg.compare == "hf":
        result["compare"] = compare_hf(cfg, one_step, env.device, tokens, clock)
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
    if "profile" in result:
        print(profile_table(result["profile"]), file=sys.stderr)
    print(text)
    if cfg.json_out:
        atomic_write_text(cfg.json_out, text + "\n")
    return 0
