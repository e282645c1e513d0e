"""Hardware presets: GPUs (peak bf16 FLOP/s, memory, bandwidth), interconnects and networks.

The trainer asks `peak_flops(device)` for MFU; `banyan plan` resolves `--gpus 4x4090`,
`--interconnect pcie4 --p2p off` and `--network 25gbe` here. Figures are vendor datasheet numbers:

* GPU TFLOP/s are *dense* bf16 tensor-core peaks (no 2:4 sparsity), the figure MFU is quoted against.
  The RTX 3090 / 4090 numbers are NVIDIA's Ampere/Ada whitepaper values (3090: 71 TFLOP/s;
  4090: 165 TFLOP/s); A100 312; H100 SXM and H200 989; H100 PCIe 756.
* Memory is in GB as the vendor sells it; the planner treats 1 GB as 2**30 bytes, which is
  what `torch.cuda.get_device_properties().total_memory` shows to within a few percent.
* Link bandwidths are GB/s *per direction*: PCIe 3/4/5 x16 = 15.75 / 31.5 / 63; NVLink 3 (A100)
  300; NVLink 4 (H100/H200) 450. Networks: Ethernet line rate / 8, InfiniBand HDR 200 Gb/s = 25
  GB/s, NDR 400 Gb/s = 50 GB/s.

Peer-to-peer (P2P) off on PCIe (GeForce cards since the 40 series, or IOMMU/ACS set-ups): NCCL
then stages every transfer through pinned host memory (its SHM transport), so each byte crosses
PCIe twice (GPU -> host, host -> GPU) and both legs share the root complex. We model that as half
the P2P bandwidth (`P2P_OFF_FACTOR`); measured NCCL bus bandwidth on such boxes is usually close
to that, and `banyan bench comm` measures the real figure.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, replace

import torch

from banyan.errors import BanyanError

P2P_OFF_FACTOR = 0.5  # bandwidth multiplier when PCIe P2P is unavailable (see module docstring)


@dataclass(frozen=True)
class Accelerator:
    """One device: peak dense FLOP/s (bf16 for GPUs, fp32 matmul for the CPU), memory and its bandwidth."""

    name: str
    tflops: float      # peak dense TFLOP/s
    mem_gb: float      # device memory, GB (2**30 bytes)
    mem_bw_gbs: float  # memory bandwidth, GB/s
    match: tuple[str, ...] = ()  # substrings of torch.cuda.get_device_name() that identify it

    @property
    def peak_flops(self) -> float:
        return self.tflops * 1e12


@dataclass(frozen=True)
class Link:
    """A link between devices: GB/s per direction; `p2p` says whether P2P on/off applies (PCIe only)."""

    name: str
    gbs: float
    pcie: bool = False


# Order matters for `match`: more specific substrings first (A100 80GB before A100).
GPUS: dict[str, Accelerator] = {
    "rtx3090": Accelerator("rtx3090", 71.0, 24, 936, ("RTX 3090",)),
    "rtx4090": Accelerator("rtx4090", 165.0, 24, 1008, ("RTX 4090",)),
    "a100-80gb": Accelerator("a100-80gb", 312.0, 80, 2039, ("A100-SXM4-80GB", "A100 80GB", "A100-PCIE-80GB")),
    "a100-40gb": Accelerator("a100-40gb", 312.0, 40, 1555, ("A100",)),
    "h100-pcie": Accelerator("h100-pcie", 756.0, 80, 2000, ("H100 PCIe",)),
    "h100": Accelerator("h100", 989.0, 80, 3350, ("H100",)),
    "h200": Accelerator("h200", 989.0, 141, 4800, ("H200",)),
}

INTERCONNECTS: dict[str, Link] = {
    "pcie3": Link("pcie3", 15.75, pcie=True),
    "pcie4": Link("pcie4", 31.5, pcie=True),
    "pcie5": Link("pcie5", 63.0, pcie=True),
    "nvlink3": Link("nvlink3", 300.0),  # A100 NVLink 3: 12 links x 25 GB/s
    "nvlink4": Link("nvlink4", 450.0),  # H100/H200 NVLink 4: 18 links x 25 GB/s
}

NETWORKS: dict[str, Link] = {
    "10gbe": Link("10gbe", 1.25),
    "25gbe": Link("25gbe", 3.125),
    "100gbe": Link("100gbe", 12.5),
    "200gb-ib": Link("200gb-ib", 25.0),
    "400gb-ib": Link("400gb-ib", 50.0),
}

# Short spellings people type: "4090", "RTX 4090", "a100 80gb", "h100 sxm".
_ALIASES = {
    "3090": "rtx3090", "4090": "rtx4090", "a10080g": "a100-80gb", "a10040g": "a100-40gb",
    "h100sxm": "h100", "h100pcie": "h100-pcie", "nvlink": "nvlink4",
}


def _norm(name: str) -> str:
    """Lower-case, drop vendor words and separators: 'NVIDIA GeForce RTX 4090' -> '4090'."""
    s = re.sub(r"[^a-z0-9]", "", name.lower())
    for word in ("nvidia", "geforce", "rtx", "tesla"):
        s = s.replace(word, "")
    return s.replace("gb", "g")


def _lookup(name: str, table: dict, what: str, flag: str):
    """Resolve `name` in `table` by exact key, alias or normalised spelling; else a BanyanError with the closest."""
    key = name.strip().lower()
    if key in table:
        return table[key]
    normalised = {_norm(k): k for k in table}
    n = _norm(key)
    if n in _ALIASES and _ALIASES[n] in table:
        return table[_ALIASES[n]]
    if n in normalised:
        return table[normalised[n]]
    if what == "GPU" and n == "a100":
        raise BanyanError("GPU 'a100' is ambiguous: use a100-40gb or a100-80gb")
    close = [normalised[c] for c in difflib.get_close_matches(n, list(normalised), n=1, cutoff=0.5)] or \
        difflib.get_close_matches(key, list(table), n=1, cutoff=0.5)
    close_name = close[0] if close else None
    hint = f"; did you mean '{close_name}'?" if close_name else ""
    raise BanyanError(f"unknown {what} '{name}' for {flag}{hint} Known: {', '.join(table)} "
                      f"(or give custom values, see --help)")


def gpu(name: str) -> Accelerator:
    """A GPU preset by name ('4090', 'rtx4090', 'h100', 'a100-80gb'); unknown -> error naming the closest."""
    if name.strip().lower() == "cpu":
        return cpu()
    return _lookup(name, GPUS, "GPU", "--gpus")


def interconnect(name: str) -> Link:
    return _lookup(name, INTERCONNECTS, "interconnect", "--interconnect")


def network(name: str) -> Link:
    return _lookup(name, NETWORKS, "network", "--network")


def parse_gpus(spec: str) -> tuple[int, str]:
    """'4x4090' -> (4, '4090'); '4090' -> (1, '4090'); '8 x h100' -> (8, 'h100')."""
    m = re.fullmatch(r"\s*(\d+)\s*[x×*]\s*(.+?)\s*", spec)
    if m:
        count = int(m.group(1))
        if count < 1:
            raise BanyanError(f"--gpus '{spec}': the count must be >= 1")
        return count, m.group(2)
    if not spec.strip():
        raise BanyanError("--gpus is empty; expected e.g. 4x4090")
    return 1, spec.strip()


def custom_gpu(base: Accelerator | None, tflops: float | None, mem_gb: float | None,
               mem_bw_gbs: float | None) -> Accelerator:
    """A preset with some figures replaced, or a wholly custom GPU (tflops and mem_gb required)."""
    if base is None:
        if tflops is None or mem_gb is None:
            raise BanyanError("a custom GPU needs both --gpu_tflops and --gpu_mem_gb")
        base = Accelerator("custom", tflops, mem_gb, mem_bw_gbs or 1000.0)
    for flag, v in (("--gpu_tflops", tflops), ("--gpu_mem_gb", mem_gb), ("--gpu_mem_bw_gbs", mem_bw_gbs)):
        if v is not None and v <= 0:
            raise BanyanError(f"{flag} must be > 0, got {v}")
    return replace(base, tflops=tflops or base.tflops, mem_gb=mem_gb or base.mem_gb,
                   mem_bw_gbs=mem_bw_gbs or base.mem_bw_gbs)


_CPU_TFLOPS: dict[int, float] = {}


def cpu_matmul_tflops(threads: int | None = None) -> float:
    """Measured fp32 matmul TFLOP/s of this CPU (a 768^3 matmul, ~0.2 s, cached per thread count).

    A CPU has no datasheet bf16 peak to quote, so its 'peak' is what a large square matmul
    actually reaches with the threads torch uses: MFU on CPU is relative to that ceiling.
    """
    import time

    threads = threads or torch.get_num_threads()
    if threads not in _CPU_TFLOPS:
        n = 768
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up: first call pays for thread-pool start
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.2:
            a @ b
            k += 1
        _CPU_TFLOPS[threads] = 2 * n**3 * k / (time.perf_counter() - t0) / 1e12
    return _CPU_TFLOPS[threads]


def cpu() -> Accelerator:
    """This machine's CPU as an Accelerator: measured matmul peak, physical RAM, a nominal 20 GB/s."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem = 16.0
    return Accelerator("cpu", cpu_matmul_tflops(), round(mem, 1), 20.0)


def match_device_name(device_name: str) -> Accelerator | None:
    """The preset whose `match` substring occurs in a CUDA device name, or None."""
    for acc in GPUS.values():
        if any(s.lower() in device_name.lower() for s in acc.match):
            return acc
    return None


def peak_flops(device: torch.device | str) -> float | None:
    """Peak dense FLOP/s of `device` for MFU: bf16 datasheet peak on known GPUs, measured matmul
    peak on CPU, None for a GPU not in the table (MFU is then not reported) or other device types."""
    device = torch.device(device)
    if device.type == "cpu":
        return cpu().peak_flops
    if device.type == "cuda":
        acc = match_device_name(torch.cuda.get_device_name(device))
        return acc.peak_flops if acc else None
    return None


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 pays over fp32 here: CUDA, or a CPU with AMX tiles (AMX-BF16).

    Without AMX, oneDNN either emulates bf16 (an AVX2-only CPU: a 256x704x256 matmul measured 8x slower
    than fp32, 0.73 vs 5.9 ms on this project's 2-core AVX2 box) or runs it on AVX512-BF16's dot-product
    instructions, which a whole train step does not win back on the casts autocast adds: on a 2-core
    Xeon with AVX512-BF16 and no AMX, `banyan bench train` measured 63.9 vs 33.8 ms a step at nanoGPT's
    CPU shape and 527-685 vs 345-413 ms at the shakespeare preset, bf16 vs fp32. `auto` picks fp32 there.
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


# glibc <malloc.h> mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
               "GLIBC_TUNABLES")
_host_memory_kept = False


def keep_host_memory() -> bool:
    """Let glibc's malloc keep freed memory for the next step instead of handing it back to the kernel.

    A CPU train step allocates and frees the same activations every step. By default glibc serves
    blocks above its mmap threshold (128 KiB, rising up to 32 MiB) with a fresh mmap and returns freed
    heap tops over its trim threshold, so every step page-faults its activations in again, zero-filling
    each 4 KiB page: 1-3k minor faults per step at nanoGPT's CPU shape (~15% of the step in bf16) and
    ~39k at the shakespeare preset (its 33.5 MB fp32 logits are over any mmap threshold), 0 after this.
    So: no mmap for allocations (M_MMAP_MAX 0: everything comes from the heap, which reuses freed
    blocks) and no trimming below 2 GiB of free heap top (M_TRIM_THRESHOLD). The price is a resident
    size that stays at the step's peak, which a training process reaches every step anyway.

    Process-wide, once; for CPU training only (a CUDA process allocates through torch's caching
    allocator). Skipped when the user set any MALLOC_* / GLIBC_TUNABLES variable (their choice wins)
    and off glibc. Returns whether the settings are in effect."""
    global _host_memory_kept
    if _host_memory_kept:
        return True
    if any(name in os.environ for name in _MALLOC_ENV):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt, gnu = libc.mallopt, libc.gnu_get_libc_version  # gnu_get_libc_version: glibc only
    except (OSError, AttributeError):
        return False
    del gnu
    _host_memory_kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _host_memory_kept
