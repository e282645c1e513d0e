"""`--nproc N` / `--parallel.nproc N`: re-launch this very command under torchrun with N local processes.

    banyan pretrain --nproc 4 ...   ==   torchrun --standalone --nproc_per_node 4 -m banyan pretrain ...

The child processes see LOCAL_RANK (set by torchrun) and so do not launch again. Multi-node
jobs call torchrun directly with a c10d rendezvous (docs/multi-gpu.md, examples/multinode/).
"""

from __future__ import annotations

import os
import subprocess
import sys


# With --max-restarts, torchrun's default of sharing its rendezvous TCPStore with the workers can hand a
# restarted rank its peer's address from the previous attempt (gloo: "connectFullMesh failed ...
# Connection refused"; pytorch/pytorch#135712, #167288). A store per attempt avoids it.
RESTART_SAFE_STORE = ("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


def alias_nproc(argv: list[str]) -> list[str]:
    """Rewrite the short `--nproc N` (or `--nproc=N`) into the config key `--parallel.nproc N`."""
    out = []
    for a in argv:
        if a == "--nproc":
            out.append("--parallel.nproc")
        elif a.startswith("--nproc="):
            out.append("--parallel.nproc=" + a.split("=", 1)[1])
        else:
            out.append(a)
    return out


def drop_option(argv: list[str], name: str) -> list[str]:
    """argv without `NAME VALUE` / `NAME=VALUE` (an option only the launching process needs)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def torchrun_command(nproc: int, args: list[str], nnodes: int = 1, rdzv_endpoint: str | None = None,
                     max_restarts: int = 0) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes > 1:
        cmd += [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}"]
    else:
        cmd += ["--standalone"]
    if max_restarts:
        cmd += [f"--max_restarts={max_restarts}"]
    return cmd + ["-m", "banyan", *args]


def launch_torchrun(nproc: int, args: list[str], **kw) -> int:
    """Run `python -m torch.distributed.run --nproc_per_node N -m banyan ARGS`; returns its exit code.

    OMP_NUM_THREADS defaults to cores / N so N CPU ranks do not oversubscribe the machine.
    """
    if nproc < 1:
        from banyan.errors import ConfigError

        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    cmd = torchrun_command(nproc, args, **kw)
    print("launching:", " ".join(cmd), file=sys.stderr)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault(*RESTART_SAFE_STORE)
    return subprocess.call(cmd, env=env)
