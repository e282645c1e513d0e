"""The measuring parts of `make gpu-check` (banyan.bench.gpu_check runs each in its own process, time-capped).

Each part writes its result to a JSON file as it goes (rows appended, file rewritten atomically), so a
part stopped at its time cap still leaves what it measured.

* env       torch/CUDA versions, the device, the optional packages present.
* bench     `banyan bench train` (the Trainer's set-up and train step) for gpt2-124m, llama-125m and
            llama-500m at seq 1024 and 2048, compile on and off, bf16 autocast, fused AdamW; and, in the
            same process, HF transformers' model of the same shapes (sdpa attention, same autocast,
            optimizer, clipping and micro-batch): tokens/s, MFU, peak memory and the banyan / HF ratio.
            Ordered so the figures the targets name (seq 2048, compile on) come first.
* validate  `banyan plan --calibrate`, then `plan --validate` for llama-125m and llama-500m at two
            shapes with the calibration: predicted vs measured memory and step time (and the step time
            the uncalibrated preset figures predict).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from banyan.io import atomic_write_json

_MODELS = ("llama-125m", "llama-500m", "gpt2-124m")
# the targets' shapes first (compiled, seq 2048), then every eager run (seconds each), then the other compiles
GPU_RUNS = ([("llama-125m", 2048, True), ("llama-500m", 2048, True)]
            + [(m, s, False) for s in (2048, 1024) for m in _MODELS]
            + [("gpt2-124m", 2048, True)] + [(m, 1024, True) for m in _MODELS])
MICRO_BATCH = {"gpt2-124m": 8, "llama-125m": 8, "llama-500m": 8}


def _save(path: Path, data) -> None:
    atomic_write_json(path, data, indent=1, default=str)


def part_env(out: Path, cpu: bool) -> None:
    import importlib.metadata as md
    import platform

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available() and not cpu:
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    device_count=torch.cuda.device_count(), nccl=".".join(map(str, torch.cuda.nccl.version())))
    for pkg in ("transformers", "bitsandbytes", "torchao", "tyro", "tomli-w", "triton"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    _save(out, info)


def _bench_cfg(model: str, seq: int, mb: int, compile_: bool, cpu: bool):
    from banyan.config import parse_cli
    from banyan.train.bench import BenchTrainConfig

    argv = ["--preset", model, "--train.seq_len", str(seq), "--train.micro_batch", str(mb),
            "--train.global_batch_tokens", str(mb * seq), *(["--train.compile"] if compile_ else []),
            "--train.device", "cpu" if cpu else "cuda", "--train.dtype", "fp32" if cpu else "bf16",
            "--optim.name", "adamw", "--warmup", "1" if cpu else "3", "--steps", "2" if cpu else "8"]
    if model.startswith("gpt2") and seq > 1024:  # gpt2-124m's learned positions stop at 1024
        argv += ["--model.max_seq_len", str(seq)]
    return parse_cli(BenchTrainConfig, argv, prog="gpu-check bench")


def hf_bench(cfg, dev: torch.device) -> dict:
    """HF transformers' CausalLM of cfg's shapes, trained as `banyan bench train` trains (banyan.train.bench.
    hf_step: same autocast, AdamW, clipping); tokens/s and peak memory."""
    from banyan.train.bench import hf_step, timed

    step, version = hf_step(cfg.model, cfg, dev)
    cuda = dev.type == "cuda"
    timed(step, cfg.warmup, cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    ms = statistics.median(timed(step, cfg.steps, cuda)) * 1e3
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None
    tokens = cfg.train.micro_batch * cfg.train.seq_len
    return {"ms_per_step": round(ms, 2), "tokens_per_s": round(tokens / (ms / 1e3), 1),
            "peak_mem_mb": round(peak, 1) if peak else None, "transformers": version}


def _free():
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def part_bench(out: Path, cpu: bool) -> None:
    from banyan.train.bench import bench

    runs = [("llama-125m", 64, False), ("gpt2-124m", 64, False)] if cpu else GPU_RUNS
    rows: list[dict] = []
    for model, seq, comp in runs:
        mb = 1 if cpu else MICRO_BATCH[model]
        row = {"model": model, "seq": seq, "compile": comp, "micro_batch": mb}
        try:
            cfg = _bench_cfg(model, seq, mb, comp, cpu)
            if cpu:  # a 2-layer, 256-wide model of the preset's family: seconds, not minutes
                cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head, cfg.model.n_kv_head = 2, 128, 2, 0
                cfg.model.d_ff, cfg.model.vocab_size = 0, 1024
            r = bench(cfg)  # finalizes cfg (derived model sizes) for the HF side too
            row.update({k: r[k] for k in ("tokens_per_s", "ms_per_step", "mfu", "peak_mem_mb", "params", "device")})
            _free()
            hf = hf_bench(cfg, torch.device("cpu" if cpu else "cuda"))
            row["hf"] = hf
            row["ratio_vs_hf"] = round(row["tokens_per_s"] / hf["tokens_per_s"], 3)
        except Exception as e:  # noqa: BLE001 - one failed shape is recorded; the others still run
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
        rows.append(row)
        _save(out, rows)
        _free()


def part_validate(out: Path, cpu: bool) -> None:
    from banyan.plan.calibrate import run_calibration
    from banyan.plan.cli import load_run_config
    from banyan.plan.validate import validate

    cal = out.with_name("calibration.json")
    result: dict = {"calibration": None, "runs": []}
    dev = "cpu" if cpu else "cuda"
    try:
        result["calibration"] = run_calibration(dev, cal, min_s=0.05 if cpu else 0.2)
    except Exception as e:  # noqa: BLE001
        result["calibration_error"] = f"{type(e).__name__}: {e}"[:500]
    _save(out, result)
    models = [("shakespeare", [(1, 64), (4, 64)])] if cpu else [("llama-125m", [(8, 2048), (2, 1024)]),
                                                                 ("llama-500m", [(8, 2048), (2, 1024)])]
    for name, shapes in models:
        cfg, _, _ = load_run_config(name, None, None, True)
        for b, t in shapes:
            row = {"model": name, "micro_batch": b, "seq": t}
            try:
                res = validate(cfg, "adamw", 2 if cpu else 4, b, t, "none", 0, dev, None, str(cal))
                row["rows"] = [{"quantity": q, "predicted": p, "measured": m, "unit": u,
                                "ratio": m / p if p else None} for q, p, m, u in res["rows"]]
                row["speed_model"], row["measured_mfu"] = res["speed_model"], res["measured_mfu"]
                row["preset_step_s"] = _preset_prediction(cfg, b, t, cpu)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"[:500]
            result["runs"].append(row)
            _save(out, result)
            _free()


def _preset_prediction(cfg, b: int, t: int, cpu: bool) -> float:
    """The step time the speed model predicts from the device's preset figures (no calibration)."""
    from banyan.hardware import cpu as cpu_acc
    from banyan.hardware import match_device_name
    from banyan.plan import memory as M
    from banyan.plan.calibrate import preset_throughput
    from banyan.plan.validate import predicted_step_seconds

    acc = cpu_acc() if cpu else (match_device_name(torch.cuda.get_device_name(0)) or cpu_acc())
    return predicted_step_seconds(cfg.model, M.param_specs(cfg.model), "adamw", b, t, "none", 0,
                                  preset_throughput(acc), 4 if cpu else 2)


PARTS = {"env": part_env, "bench": part_bench, "validate": part_validate}


def run_part(name: str, out: str, cpu: bool) -> int:
    PARTS[name](Path(out), cpu)
    return 0


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
