"""GPU peer-to-peer (P2P) diagnosis for `banyan bench comm`: access matrix, copy check, plain-words verdicts.

Consumer multi-GPU boxes (e.g. 4x RTX 4090 on PCIe 4.0, no NVLink) often have P2P off (GeForce cards
since the 40 series, or the IOMMU / PCIe ACS forcing traffic through the root complex). NCCL then
stages transfers through host memory, which is slower but correct. Worse is P2P reported *on* but
broken (IOMMU remapping on some boards): copies return wrong data and collectives hang or corrupt
gradients silently. The cures are NCCL environment variables and kernel/BIOS settings:

    NCCL_P2P_DISABLE=1      do not use P2P (host-memory staging instead)
    NCCL_IB_DISABLE=1       no InfiniBand: use TCP sockets between nodes (plain Ethernet)
    NCCL_SOCKET_IFNAME=eth0 the network interface NCCL should use between nodes
    iommu=pt / ACS off      let PCIe peer traffic through (kernel boot flag / BIOS setting)

See NVIDIA's NCCL troubleshooting guide (docs.nvidia.com/deeplearning/nccl, "Troubleshooting": PCI
Access Control Services, IOMMU) for the background.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

COPY_MB = 16
COPY_TIMEOUT_S = 20.0


def _copy_check(i: int, j: int) -> str:
    """Copy 16 MiB GPU i -> GPU j directly and compare: 'ok', 'wrong' or 'hang' (no answer in 20 s)."""
    box: dict[str, str] = {}

    def body():
        try:
            src = torch.arange(COPY_MB * 2**20 // 4, device=f"cuda:{i}", dtype=torch.float32)
            dst = src.to(f"cuda:{j}")
            torch.cuda.synchronize(j)
            box["r"] = "ok" if torch.equal(dst.cpu(), src.cpu()) else "wrong"
        except RuntimeError as e:  # e.g. an illegal access reported by the driver
            box["r"] = f"error: {str(e).splitlines()[0]}"

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(COPY_TIMEOUT_S)
    return box.get("r", "hang")


def iommu_state() -> dict:
    """Kernel IOMMU flags and group count (Linux); empty when unknown."""
    flags: list[str] = []
    try:
        flags = [f for f in Path("/proc/cmdline").read_text().split() if "iommu" in f]
    except OSError:
        pass
    groups = Path("/sys/kernel/iommu_groups")
    n = len(list(groups.iterdir())) if groups.is_dir() else 0
    return {"kernel_flags": flags, "groups": n, "on": n > 0 and "iommu=pt" not in flags}


def report() -> dict:
    """Access matrix, copy results and verdicts for the GPUs this process sees."""
    n = torch.cuda.device_count()
    names = [torch.cuda.get_device_name(i) for i in range(n)]
    access = [[i == j or bool(torch.cuda.can_device_access_peer(i, j)) for j in range(n)] for i in range(n)]
    copies, verdicts = {}, []
    for i in range(n):
        for j in range(i + 1, n):
            res = _copy_check(i, j)
            copies[f"{i}-{j}"] = res
            on = access[i][j] and access[j][i]
            if res == "wrong":
                verdicts.append(f"GPU{i} -> GPU{j} copies return WRONG data (P2P {'on' if on else 'off'}): "
                                f"set NCCL_P2P_DISABLE=1 and turn off the IOMMU (iommu=pt) / PCIe ACS")
            elif res == "hang":
                verdicts.append(f"GPU{i} -> GPU{j} copy did not finish in {COPY_TIMEOUT_S:g} s: P2P is broken "
                                f"here; set NCCL_P2P_DISABLE=1")
            elif res.startswith("error"):
                verdicts.append(f"GPU{i} -> GPU{j} copy failed ({res}); set NCCL_P2P_DISABLE=1")
            elif on:
                verdicts.append(f"P2P is on between GPU{i} and GPU{j}, and direct copies are correct")
            else:
                verdicts.append(f"P2P is off between GPU{i} and GPU{j}: traffic goes through host memory "
                                f"(slower, still correct)")
    if n < 2:
        verdicts.append(f"{n} GPU visible to this process: no peer-to-peer pair to test")
    return {"gpus": names, "access": access, "copies": copies, "verdicts": verdicts, "iommu": iommu_state()}


def format_report(rep: dict) -> str:
    n = len(rep["gpus"])
    lines = ["peer-to-peer access (row can read/write column directly):",
             "        " + " ".join(f"GPU{j:<3d}" for j in range(n))]
    for i in range(n):
        lines.append(f"  GPU{i:<3d} " + " ".join(f"{'-' if i == j else ('yes' if rep['access'][i][j] else 'no'):<6}"
                                               for j in range(n)))
    lines += [f"  {v}" for v in rep["verdicts"]]
    io = rep["iommu"]
    if io.get("groups"):
        lines.append(f"  IOMMU: {io['groups']} groups, kernel flags {io['kernel_flags'] or 'none'}")
    return "\n".join(lines)


def advice(rep: dict | None, num_nodes: int, hang: bool = False, wrong: bool = False) -> list[str]:
    """The settings that usually cure what was seen, most likely first."""
    out = []
    p2p_trouble = rep is not None and any(v != "ok" for v in rep["copies"].values())
    p2p_off = rep is not None and any(not all(row) for row in rep["access"])
    if rep is not None and (p2p_trouble or ((hang or wrong) and len(rep["gpus"]) > 1)):
        out.append("export NCCL_P2P_DISABLE=1   # route GPU-to-GPU traffic through host memory instead of P2P")
        if rep["iommu"].get("on"):
            out.append(f"the IOMMU is on ({rep['iommu']['groups']} groups): boot with iommu=pt (or amd_iommu=off / "
                       f"intel_iommu=off) and disable PCIe ACS in the BIOS, then P2P can work again")
        else:
            out.append("if P2P is meant to work: disable PCIe ACS in the BIOS (it forces peer traffic up "
                       "to the root complex)")
    elif p2p_off:
        out.append("P2P is off on some pairs: NCCL stages through host memory by itself; "
                   "if a job hangs anyway, export NCCL_P2P_DISABLE=1")
    if num_nodes > 1 and not Path("/sys/class/infiniband").is_dir():
        out.append("no InfiniBand here: export NCCL_IB_DISABLE=1 NCCL_SOCKET_IFNAME=<your NIC, e.g. eth0> "
                   "(GLOO_SOCKET_IFNAME for gloo) so traffic uses TCP over Ethernet")
    if hang and rep is not None:
        out.append("export NCCL_DEBUG=INFO to see which transport and step it stops in; check that no rank "
                   "is stuck elsewhere (a collective waits for every rank)")
    elif hang:
        out.append("gloo (CPU): check that no rank is stuck elsewhere (a collective waits for every rank); "
                   "across nodes export GLOO_SOCKET_IFNAME=<your NIC> and open the rendezvous port")
    if wrong and rep is None:
        out.append("a collective returned wrong data on CPU (gloo): check memory (ECC) and that all ranks run "
                   "the same torch version")
    return out
