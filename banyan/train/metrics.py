"""Throughput figures for LM training: peak FLOP/s for MFU and peak memory.

The metrics logger and reader live in banyan.logger (one schema for LM and RL runs); they are
re-exported here so `from banyan.train.metrics import MetricsLogger, read_metrics` keeps working.
"""

from __future__ import annotations

import time

import torch

from banyan.logger import MetricsLogger, read_metrics, trim_metrics  # noqa: F401 - re-exported


_CPU_PEAK: dict[str, float] = {}


def measured_cpu_flops(dtype: torch.dtype = torch.float32, seconds: float = 0.3) -> float:
    """Measured dense matmul FLOP/s of this CPU (all threads torch uses), cached per dtype.

    There is no datasheet peak for an arbitrary CPU, so CPU MFU is relative to what a large
    square matmul reaches here: a practical ceiling rather than the silicon's peak.
    """
    key = str(dtype)
    if key not in _CPU_PEAK:
        n = 1024
        g = torch.Generator().manual_seed(0)  # its own generator: measuring never shifts the training RNG
        a, b = torch.randn(n, n, dtype=dtype, generator=g), torch.randn(n, n, dtype=dtype, generator=g)
        for _ in range(2):
            a @ b
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            k += 1
        _CPU_PEAK[key] = 2 * n**3 * k / (time.perf_counter() - t0)
    return _CPU_PEAK[key]


def peak_flops_for(device: torch.device, dtype: str = "auto") -> float:
    """Peak FLOP/s for MFU: the GPU table in banyan.hardware, or a measured figure on CPU."""
    if device.type == "cuda":
        try:
            from banyan.hardware import peak_flops

            peak = peak_flops(device)
            if peak:
                return peak
        except ImportError:
            pass
        return float("nan")
    from banyan.train.step import resolve_dtype

    return measured_cpu_flops(torch.bfloat16 if resolve_dtype(device, dtype) == "bf16" else torch.float32)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated memory: CUDA allocator on GPU; max RSS of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
