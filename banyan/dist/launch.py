"""`--parallel.nproc N`: re-launch this very command under torchrun with N local processes."""

from __future__ import annotations

import os
import subprocess
import sys


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
    """Run `python -m torch.distributed.run --nproc_per_node N -m banyan ARGS`; returns its exit code."""
    cmd = torchrun_command(nproc, args, **kw)
    print("launching:", " ".join(cmd), file=sys.stderr)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)
