"""`banyan plan --calibrate`: measure this device's matmul rate, memory and bus bandwidth; store them.

The speed model (speed.py) times a GEMM as 2mnk / (R f(m) f(n) f(k)) with f(d) = d / (d + d0).
Calibration times GEMMs at a few shapes (large, and with one narrow dim, the way small micro-
batches and narrow layers are narrow), then fits R and d0: for each d0 on a log grid, R is the
geometric mean of flops / (t f f f), and the d0 with the least squared log error wins. Memory
bandwidth is a large tensor copy (read + write), the launch cost a one-element add, the bus a
pinned host -> device copy (what PCIe P2P-off traffic crosses) or device -> device with 2 GPUs.

Results live in ~/.cache/banyan/calibration.json (or --calibration FILE), one entry per device
key (the CUDA device name, or "cpu/<threads>t"); later plans for that device use them (the entry
records the matching GPU preset, so `--gpus 4x4090` uses a 4090's calibration).
Without calibration the preset figures apply: GPUs reach ~80% of the datasheet bf16 peak on large
GEMMs (e.g. ~790 of 989 TFLOP/s on an H200) and ~85% of the datasheet memory bandwidth.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

from banyan.errors import BanyanError
from banyan.hardware import Accelerator, cpu, match_device_name
from banyan.io import atomic_write_json
from banyan.plan.speed import ATTN_BWD_FACTOR, Throughput, attention_flops, dim_efficiency

GPU_MATMUL_FRACTION = 0.8   # achievable / datasheet dense bf16 peak (cuBLAS, large GEMMs)
GPU_BW_FRACTION = 0.85      # achievable / datasheet memory bandwidth (a large copy)
GPU_D0, CPU_D0 = 64.0, 24.0  # half-efficiency dims: tensor-core tiles are 128 wide, CPU micro-kernels ~16-32
GPU_LAUNCH_S, CPU_LAUNCH_S = 5e-6, 1.5e-5  # eager PyTorch per-op overhead
CPU_SHAPES = [(1024, 1024, 1024), (512, 768, 768), (128, 768, 768), (32, 1024, 1024), (1024, 64, 1024),
              (256, 256, 256)]
# causal SDPA forward+backward (micro-batch, heads, T, head_dim): CPU only (GPU flash kernels run near the GEMM rate)
CPU_ATTN_SHAPES = [(8, 4, 96, 64), (4, 4, 192, 48), (2, 4, 384, 64)]
FAULT_MB = 64  # page-fault probe: zeros of 64 MiB (fresh mmap) vs zero_ of a live 64 MiB tensor
CPU_ELEM_MB = 8  # elementwise probe: out-of-place multiply of two 8 MiB fp32 tensors (an activation's size)
DISPATCH_CHAIN = 64  # tiny autograd ops timed forward + backward for the per-aten-call host cost
GPU_SHAPES = [(8192, 8192, 8192), (16384, 768, 768), (2048, 768, 768), (16384, 256, 768), (4096, 64, 4096),
              (512, 512, 512), (128, 4096, 4096)]


def default_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "banyan" / "calibration.json"


def device_key(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu/{torch.get_num_threads()}t"


def preset_throughput(acc: Accelerator) -> Throughput:
    """Figures for a device never calibrated (module docstring)."""
    if acc.name == "cpu":
        # cpu() measured a 768^3 matmul: that is R f(768)^3, so R is above it
        r = acc.tflops / dim_efficiency(768, CPU_D0) ** 3
        return Throughput(r, CPU_D0, acc.mem_bw_gbs, 0.0, "preset (cpu: measured 768^3 matmul)",
                          dispatch_s=CPU_LAUNCH_S)
    return Throughput(acc.tflops * GPU_MATMUL_FRACTION, GPU_D0, acc.mem_bw_gbs * GPU_BW_FRACTION, GPU_LAUNCH_S,
                      f"preset ({GPU_MATMUL_FRACTION:g} x {acc.tflops:g} TFLOP/s, {GPU_BW_FRACTION:g} x "
                      f"{acc.mem_bw_gbs:g} GB/s)")


def read_calibration(path: str | Path | None = None) -> dict:
    p = Path(path) if path else default_path()
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BanyanError(f"{p}: unreadable calibration file ({e}); delete it or rerun banyan plan --calibrate")
    if not isinstance(data, dict) or not isinstance(data.get("devices"), dict):
        raise BanyanError(f"{p}: expected a JSON object with a 'devices' object; rerun banyan plan --calibrate")
    return data["devices"]


def _from_entry(entry: dict, path: str | Path | None) -> Throughput:
    dispatch = float(entry.get("dispatch_s", 0.0))  # CPU: per-aten-call dispatch replaces the per-kernel launch
    return Throughput(float(entry["matmul_tflops"]), float(entry["d0"]), float(entry["mem_bw_gbs"]),
                      0.0 if dispatch else float(entry["launch_s"]),
                      f"calibrated {entry.get('when', '')} ({path or default_path()})",
                      attn_tflops=float(entry.get("attn_tflops", 0.0)), attn_d0=float(entry.get("attn_d0", 0.0)),
                      elem_bw_gbs=float(entry.get("elem_bw_gbs", 0.0)), dispatch_s=dispatch,
                      nt_rate=float(entry.get("nt_rate", 1.0)), tn_rate=float(entry.get("tn_rate", 1.0)),
                      page_fault_s=float(entry.get("page_fault_s", 0.0)), gelu_s=float(entry.get("gelu_s", 0.0)),
                      gelu_tanh_s=float(entry.get("gelu_tanh_s", 0.0)))


def throughput_for(acc: Accelerator, key: str | None = None, path: str | Path | None = None) -> Throughput:
    """The calibrated figures for device `key` (or, failing that, for any device of preset `acc.name`),
    else the preset ones."""
    devices = read_calibration(path)
    if key and key in devices:
        return _from_entry(devices[key], path)
    match = [e for e in devices.values() if e.get("preset") == acc.name and acc.name != "cpu"]
    return _from_entry(match[-1], path) if match else preset_throughput(acc)


def _time(fn, min_s: float, sync) -> float:
    """Median seconds of fn() over repeats filling ~min_s, after one warm-up call."""
    fn()
    sync()
    times, t_end = [], time.perf_counter() + min_s
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fit_curve(samples: list[tuple[int, int, int, float]]) -> tuple[float, float, float]:
    """(R TFLOP/s, d0, rms log error) fitting t = 2mnk / (R f(m) f(n) f(k)) to (m, n, k, seconds)."""
    return fit_rate([(2.0 * m * n * k, (m, n, k), t) for m, n, k, t in samples])


def fit_rate(samples: list[tuple[float, tuple[int, ...], float]]) -> tuple[float, float, float]:
    """(R TFLOP/s, d0, rms log error) fitting t = flops / (R prod f(d)) to (flops, dims, seconds).

    For each d0 on a log grid R is the geometric mean of flops / (t prod f(d)); the least squared log error wins."""
    if len(samples) < 2:
        raise BanyanError(f"calibration needs at least 2 timed kernels, got {len(samples)}")
    best = None
    for i in range(61):
        d0 = 2 ** (i / 6)  # 1 .. 1024, 6 points per octave
        rates = [fl / (t * math.prod(dim_efficiency(d, d0) for d in dims)) for fl, dims, t in samples]
        r = math.exp(statistics.fmean(math.log(x) for x in rates))
        err = math.sqrt(statistics.fmean(math.log(x / r) ** 2 for x in rates))
        if best is None or err < best[2]:
            best = (r / 1e12, d0, err)
    return best


def _sdpa_seconds(b: int, h: int, t: int, hd: int, min_s: float) -> float:
    """Seconds of one causal SDPA forward + backward, [b, h, t, hd] fp32 on the CPU."""
    q, k, v = (torch.randn(b, h, t, hd, requires_grad=True) for _ in range(3))
    g = torch.randn(b, h, t, hd)
    return _time(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).backward(g),
                 min_s, lambda: None)


def _dispatch_seconds(min_s: float) -> float:
    """Host seconds per eager aten call: DISPATCH_CHAIN one-element multiplies recorded by autograd, forward
    (one call each) + backward (one MulBackward0 multiply each), over 2 x DISPATCH_CHAIN calls."""
    w = torch.ones(1, requires_grad=True)

    def chain():
        h = w
        for _ in range(DISPATCH_CHAIN):
            h = h * 1.0
        h.backward()

    return _time(chain, min_s, lambda: None) / (2 * DISPATCH_CHAIN)


def calibrate_cpu_ops(min_s: float, attn_shapes: list[tuple[int, int, int, int]] | None = None,
                      elem_mb: int = CPU_ELEM_MB) -> dict:
    """The CPU's eager costs beyond GEMMs: causal SDPA rate (fit like the GEMM curve over f(T)^2 f(hd)),
    out-of-place elementwise bandwidth, host dispatch per aten call, GELU (exact and tanh) arithmetic and
    page faults of fresh >= 32 MiB blocks (speed.Throughput fields)."""
    attn = [(b, h, t, hd, _sdpa_seconds(b, h, t, hd, min_s)) for b, h, t, hd in attn_shapes or CPU_ATTN_SHAPES]
    fwd_flops = [attention_flops(h, b, t, hd) * (1 + ATTN_BWD_FACTOR) for b, h, t, hd, _ in attn]
    ar, ad0, aerr = fit_rate([(fl, (t, t, hd), s) for fl, (_, _, t, hd, s) in zip(fwd_flops, attn)])
    n = elem_mb * 2**20 // 4
    x, y = torch.randn(n), torch.randn(n)
    elem_bw = 3 * x.nbytes / _time(lambda: x * y, min_s, lambda: None) / 1e9  # read 2, write 1 (fresh)
    gelu = {a: (_time(lambda: torch.nn.functional.gelu(x, approximate=a), min_s / 2, lambda: None)
                + _time(lambda: torch.ops.aten.gelu_backward(y, x, approximate=a), min_s / 2, lambda: None)) / n
            for a in ("none", "tanh")}  # forward + backward seconds per value
    big = torch.empty(FAULT_MB * 2**20 // 4)  # above glibc's mmap threshold: each torch.zeros is a fresh mmap
    fresh = _time(lambda: torch.zeros(big.numel()), min_s, lambda: None)
    fault = max(0.0, fresh - _time(big.zero_, min_s, lambda: None)) / big.nbytes
    return {"attn_tflops": ar, "attn_d0": ad0, "attn_fit_rms_log_error": aerr, "elem_bw_gbs": elem_bw,
            "dispatch_s": _dispatch_seconds(min_s / 2), "gelu_s": gelu["none"], "gelu_tanh_s": gelu["tanh"],
            "page_fault_s": fault,
            "attention": [{"b": b, "h": h, "t": t, "hd": hd, "seconds": s, "tflops": fl / s / 1e12}
                          for (b, h, t, hd, s), fl in zip(attn, fwd_flops)]}


def calibrate(dev: torch.device, shapes: list[tuple[int, int, int]] | None = None, min_s: float = 0.2,
              copy_mb: int = 0) -> dict:
    """Time matmuls (X W, and the training layouts X W^T and dY^T X as rates relative to it), a copy, a tiny
    op and the bus on `dev` (and on CPU the eager costs of calibrate_cpu_ops); returns the calibration entry."""
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    dtype = torch.bfloat16 if cuda else torch.float32
    shapes = shapes or (GPU_SHAPES if cuda else CPU_SHAPES)
    samples, layouts = [], []
    for m, n, k in shapes:
        a, b = torch.randn(m, k, device=dev, dtype=dtype), torch.randn(k, n, device=dev, dtype=dtype)
        bt, at = b.t().contiguous(), a.t().contiguous()  # stored [n, k] (a weight) and [k, m] (dY for dW)
        samples.append((m, n, k, _time(lambda: a @ b, min_s, sync)))
        layouts.append((samples[-1][3] / _time(lambda: a @ bt.t(), min_s / 2, sync),
                        samples[-1][3] / _time(lambda: at.t() @ b, min_s / 2, sync)))
    r, d0, err = fit_curve(samples)
    nt, tn = (math.exp(statistics.fmean(math.log(x[i]) for x in layouts)) for i in (0, 1))  # geometric means
    n_copy = (copy_mb or (1024 if cuda else 128)) * 2**20 // 4
    src = torch.empty(n_copy, device=dev)
    dst = torch.empty_like(src)
    mem_bw = 2 * src.nbytes / _time(lambda: dst.copy_(src), min_s, sync) / 1e9
    one = torch.zeros(1, device=dev)
    launch = _time(lambda: one.add_(1), min_s / 2, sync)
    bus, bus_kind = None, None
    if cuda:
        if torch.cuda.device_count() > 1:
            other = torch.empty_like(src, device=torch.device("cuda", (dev.index or 0) + 1 if
                                                              (dev.index or 0) + 1 < torch.cuda.device_count() else 0))
            bus_kind, fn = "device-to-device", lambda: other.copy_(src)
        else:
            host = torch.empty(n_copy, pin_memory=True)
            bus_kind, fn = "pinned host-to-device", lambda: src.copy_(host, non_blocking=True)
        bus = src.nbytes / _time(fn, min_s, lambda: torch.cuda.synchronize()) / 1e9
    acc = match_device_name(torch.cuda.get_device_name(dev)) if cuda else None
    return {"preset": acc.name if acc else ("cpu" if not cuda else None), "matmul_tflops": r, "d0": d0,
            "fit_rms_log_error": err, "nt_rate": nt, "tn_rate": tn, "mem_bw_gbs": mem_bw, "launch_s": launch,
            "bus_gbs": bus, "bus_kind": bus_kind, "dtype": str(dtype).replace("torch.", ""),
            "matmuls": [{"m": m, "n": n, "k": k, "seconds": t, "tflops": 2 * m * n * k / t / 1e12}
                        for m, n, k, t in samples],
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "load_1min": os.getloadavg()[0],
            **({} if cuda else calibrate_cpu_ops(min_s))}


def store(key: str, entry: dict, path: str | Path | None = None) -> Path:
    """Add or replace `key`'s entry in the calibration file (atomically)."""
    p = Path(path) if path else default_path()
    devices = read_calibration(p)
    devices[key] = entry
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(p, {"devices": devices})


def run_calibration(device: str = "auto", path: str | Path | None = None, min_s: float = 0.2) -> dict:
    """Measure the local device and store it; returns {"key", "path", **entry}."""
    from banyan.parallel.env import resolve_device

    dev = resolve_device(device, flag="--device")
    entry = calibrate(dev, min_s=min_s)
    key = device_key(dev)
    where = store(key, entry, path)
    return {"key": key, "path": str(where), **entry}


def cpu_throughput(path: str | Path | None = None) -> Throughput:
    """This CPU's throughput: its calibration if stored, else the preset from a quick matmul."""
    return throughput_for(cpu(), device_key(torch.device("cpu")), path)


__all__ = ["calibrate", "calibrate_cpu_ops", "cpu_throughput", "default_path", "device_key", "fit_curve", "fit_rate",
           "preset_throughput", "read_calibration", "run_calibration", "store", "throughput_for"]
