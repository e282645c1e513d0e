"""Hardware presets: GPU/link lookup, closest-name errors, custom figures, peak FLOPs."""

import pytest

from banyan import hardware as hw
from banyan.errors import BanyanError
from banyan.plan.planner import resolve_hardware


@pytest.mark.parametrize("name,key", [("4090", "rtx4090"), ("RTX 4090", "rtx4090"), ("rtx3090", "rtx3090"),
                                      ("A100 80GB", "a100-80gb"), ("a100-40gb", "a100-40gb"), ("H100", "h100"),
                                      ("h100 pcie", "h100-pcie"), ("H200", "h200")])
def test_gpu_names(name, key):
    assert hw.gpu(name).name == key


def test_presets_hold_the_datasheet_figures():
    assert (hw.GPUS["rtx4090"].tflops, hw.GPUS["rtx4090"].mem_gb, hw.GPUS["rtx4090"].mem_bw_gbs) == (165.0, 24, 1008)
    assert hw.GPUS["h200"].mem_gb == 141 and hw.GPUS["a100-80gb"].tflops == 312.0
    assert hw.INTERCONNECTS["pcie4"].gbs == 31.5 and hw.NETWORKS["25gbe"].gbs == 3.125


@pytest.mark.parametrize("name,closest", [("4080", "rtx4090"), ("h300", "h200"), ("pcie6", "pcie5")])
def test_unknown_names_suggest_the_closest(name, closest):
    lookup = hw.interconnect if name.startswith("pcie") else hw.gpu
    with pytest.raises(BanyanError, match=f"did you mean '{closest}'"):
        lookup(name)


def test_ambiguous_a100_and_gpu_counts():
    with pytest.raises(BanyanError, match="a100-40gb or a100-80gb"):
        hw.gpu("a100")
    assert hw.parse_gpus("4x4090") == (4, "4090") and hw.parse_gpus("8 x h100") == (8, "h100")
    assert hw.parse_gpus("h200") == (1, "h200")
    with pytest.raises(BanyanError, match="count must be"):
        hw.parse_gpus("0x4090")


def test_device_names_map_to_presets():
    assert hw.match_device_name("NVIDIA GeForce RTX 4090").name == "rtx4090"
    assert hw.match_device_name("NVIDIA A100-SXM4-80GB").name == "a100-80gb"
    assert hw.match_device_name("NVIDIA A100-SXM4-40GB").name == "a100-40gb"
    assert hw.match_device_name("NVIDIA H100 80GB HBM3").name == "h100"
    assert hw.match_device_name("NVIDIA H200").name == "h200"
    assert hw.match_device_name("Tesla T4") is None
    assert hw.peak_flops("cpu") > 1e9


def test_bandwidth_model_and_custom_values():
    p2p = resolve_hardware("4x4090", "pcie4", p2p=True)
    no_p2p = resolve_hardware("4x4090", "pcie4", p2p=False)
    assert no_p2p.bw_gbs == pytest.approx(p2p.bw_gbs * hw.P2P_OFF_FACTOR)
    two = resolve_hardware("4x4090", "pcie4", nodes=2, net="25gbe")
    assert two.world == 8 and two.bw_gbs < 3.125  # the NIC is the ring's bottleneck
    custom = resolve_hardware("2xcustom", gpu_tflops=100, gpu_mem_gb=48, bandwidth_gbs=20)
    assert (custom.gpu.tflops, custom.gpu.mem_gb, custom.bw_gbs) == (100, 48, 20)
    assert resolve_hardware("4090", gpu_mem_gb=48).gpu.mem_gb == 48
    with pytest.raises(BanyanError, match="PCIe only"):
        resolve_hardware("8xh100", "nvlink4", p2p=False)
    with pytest.raises(BanyanError, match="needs --network"):
        resolve_hardware("4x4090", nodes=2)
    with pytest.raises(BanyanError, match="--gpu_tflops and --gpu_mem_gb"):
        resolve_hardware("2xcustom", gpu_tflops=100)


_FAULTS = """
import resource, sys, torch
from banyan.hardware import keep_host_memory
kept = keep_host_memory() if sys.argv[1] == "keep" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # allocated, touched, freed
f0 = faults()
torch.empty(32 << 20, dtype=torch.uint8).fill_(1)  # fits in the freed block: fresh pages or reused ones?
print(kept, faults() - f0)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_keep_host_memory_reuses_freed_blocks_without_page_faults():
    """32 MiB allocated after a 64 MiB block was freed: 8k page faults by default (both are over glibc's
    mmap threshold: a fresh mapping, zero-filled page by page), none once keep_host_memory is in effect
    (the freed heap block is reused); a MALLOC_* variable set by the user wins."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def run(mode, **extra):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], env={**env, **extra}, check=True,
                             capture_output=True, text=True).stdout.split()
        return out[0] == "True", int(out[1])

    kept, faults = run("keep")
    assert kept and faults < 1000
    kept, faults = run("default")
    assert not kept and faults > 8000  # 32 MiB / 4 KiB = 8192 pages
    kept, _ = run("keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert not kept
