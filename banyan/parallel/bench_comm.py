"""`banyan bench comm`: bus bandwidth of all-reduce, all-gather and reduce-scatter, each result checked.

    banyan bench comm                    # 2 gloo processes on CPU, or one per GPU; launches torchrun itself
    torchrun --nproc_per_node 4 -m banyan bench comm --max_mb 256

Message sizes go from `min_mb` to `max_mb` (x`factor` each step), skipping sizes that do not fit in
free memory. Bandwidth follows nccl-tests' conventions (PERFORMANCE.md there): algbw = S / t with S the
full buffer (the all-gather output, the reduce-scatter input), and bus bandwidth

    all_reduce      busbw = algbw * 2(n-1)/n
    all_gather      busbw = algbw * (n-1)/n
    reduce_scatter  busbw = algbw * (n-1)/n

which is comparable with the link speed whatever the rank count. Every collective is first run on
known data and compared with the exact answer (consumer GPUs with broken peer-to-peer copies return
wrong data without an error), and every wait is bounded by `timeout_s`: a collective that does not
finish is reported as a hang with the usual cures, and the process exits instead of waiting forever.
On CUDA, rank 0 also prints the GPU peer-to-peer access matrix (banyan.parallel.p2p).
Results: a table on stdout, OUT/comm.json and OUT/comm.png.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.distributed as dist

from banyan.errors import BanyanError
from banyan.config import parse_cli
from banyan.io import atomic_write_json, save_figure
from banyan.parallel.env import DistEnv

OPS = ("all_reduce", "all_gather", "reduce_scatter")
MB = 2**20
# torch 2.13 renamed the flat-tensor collectives; older releases only have the *_tensor names
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass
class BenchCommConfig:
    """Benchmark collectives (bus bandwidth over message sizes) and check their results."""

    nproc: int = 0
    """Local processes to launch through torchrun (0: one per GPU when there are 2+, else 2 CPU processes;
    1: a smoke check that NCCL/gloo and the P2P report start, as `make gpu-check` runs on one GPU)."""
    ops: tuple[Literal["all_reduce", "all_gather", "reduce_scatter"], ...] = OPS
    """Collectives to measure."""
    min_mb: float = 1.0
    """Smallest message, MiB."""
    max_mb: float = 1024.0
    """Largest message, MiB (sizes that do not fit in free memory are skipped)."""
    factor: int = 4
    """Each size is this many times the previous one."""
    iters: int = 0
    """Timed repetitions per size (0: as many as fit in `time_budget_s`, 1 to 50)."""
    time_budget_s: float = 1.0
    """Target time per (collective, size) when iters is 0."""
    timeout_s: float = 60.0
    """A collective not finished after this many seconds is reported as a hang."""
    device: str = "auto"
    """auto (cuda:LOCAL_RANK with NCCL when there are GPUs, else cpu with gloo), cpu or cuda."""
    out: str = "runs/bench_comm"
    """Folder for comm.json and comm.png."""
    simulate_hang_rank: int = -1
    """Testing aid: this rank enters its first collective only after timeout_s, so the others see a hang (-1: off)."""

    # checked by parse_cli in the launching process, before torchrun starts (banyan.configlib.check_ranges)
    ranges = {"nproc": (0, None), "min_mb": (1e-6, None), "max_mb": (1e-6, None), "factor": (2, None),
              "iters": (0, None), "time_budget_s": (1e-3, None), "timeout_s": (1e-3, None),
              "simulate_hang_rank": (-1, None)}


def bus_factor(op: str, n: int) -> float:
    return 2 * (n - 1) / n if op == "all_reduce" else (n - 1) / n


class Watchdog:
    """Bounds blocking calls: if a guarded block has not returned after `timeout_s`, `on_hang(what)` runs
    on a timer thread (the blocked main thread cannot be interrupted; on_hang reports and exits)."""

    def __init__(self, timeout_s: float, on_hang: Callable[[str], None]):
        self.timeout_s, self.on_hang = timeout_s, on_hang

    @contextlib.contextmanager
    def guard(self, what: str, timeout_s: float | None = None):
        timer = threading.Timer(timeout_s or self.timeout_s, self.on_hang, args=(what,))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()


def sizes_mb(cfg: BenchCommConfig) -> list[float]:
    if cfg.min_mb <= 0 or cfg.max_mb < cfg.min_mb or cfg.factor < 2:
        raise BanyanError(f"need 0 < min_mb <= max_mb and factor >= 2; got min_mb={cfg.min_mb}, "
                          f"max_mb={cfg.max_mb}, factor={cfg.factor}")
    out, s = [], cfg.min_mb
    while s <= cfg.max_mb * (1 + 1e-9):
        out.append(s)
        s *= cfg.factor
    return out


class Collective:
    """One collective on a buffer of `numel` fp32 elements (a multiple of world size), with known inputs.

    Rank r's input is (r + 1) + (i mod 251) at position i of the full buffer: small integers, so fp32
    sums are exact and a misplaced, stale or zeroed chunk changes the answer.
    """

    def __init__(self, op: str, numel: int, env: DistEnv):
        self.op, self.n, self.env = op, numel, env
        self.dev = env.device
        w, r = env.world_size, env.rank
        self.pattern = (torch.arange(numel, device=self.dev) % 251).float()
        self.chunk = numel // w
        if op == "all_reduce":
            self.buf = torch.empty(numel, device=self.dev)
        elif op == "all_gather":
            self.inp = torch.empty(self.chunk, device=self.dev)
            self.buf = torch.empty(numel, device=self.dev)
        else:
            self.inp = torch.empty(numel, device=self.dev)
            self.buf = torch.empty(self.chunk, device=self.dev)
        self.rank_term = float(r + 1)

    def fill(self) -> None:
        r, c = self.env.rank, self.chunk
        if self.op == "all_reduce":
            torch.add(self.pattern, self.rank_term, out=self.buf)
        elif self.op == "all_gather":
            torch.add(self.pattern[r * c:(r + 1) * c], self.rank_term, out=self.inp)
        else:
            torch.add(self.pattern, self.rank_term, out=self.inp)

    def run(self) -> None:
        """One collective, waited for (on CUDA the stream is synchronised, so the time is the transfer's)."""
        if self.op == "all_reduce":
            dist.all_reduce(self.buf)
        elif self.op == "all_gather":
            _ALL_GATHER(self.buf, self.inp)
        else:
            _REDUCE_SCATTER(self.buf, self.inp)
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def correct(self) -> bool:
        w, r, c = self.env.world_size, self.env.rank, self.chunk
        if self.op == "all_reduce":
            expect = self.pattern * w + w * (w + 1) / 2
        elif self.op == "all_gather":
            ranks = torch.arange(w, device=self.dev).repeat_interleave(c).float()
            expect = self.pattern + ranks + 1
        else:
            expect = self.pattern[r * c:(r + 1) * c] * w + w * (w + 1) / 2
        return bool(torch.equal(self.buf, expect))


def _agree(value: float, env: DistEnv, op=dist.ReduceOp.MAX) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=op)
    return float(t.item())


def _free_bytes(env: DistEnv) -> int:
    from banyan.parallel.auto import free_memory_bytes

    return int(_agree(free_memory_bytes(env), env, dist.ReduceOp.MIN))


def measure(cfg: BenchCommConfig, env: DistEnv, dog: Watchdog, rows: list[dict]) -> None:
    """Run every (op, size), appending one row per pair to `rows` (skipped sizes too, with the reason)."""
    free = _free_bytes(env)
    first = True
    for op in cfg.ops:
        for mb in sizes_mb(cfg):
            numel = max(env.world_size, int(mb * MB / 4) // env.world_size * env.world_size)
            nbytes = numel * 4
            if 3.5 * nbytes > 0.8 * free:  # buffer, input/pattern, the expected answer while checking
                rows.append({"op": op, "size_mb": nbytes / MB, "skipped": "not enough free memory"})
                continue
            c = Collective(op, numel, env)
            what = f"{op} of {nbytes / MB:g} MiB"
            c.fill()
            if first and env.rank == cfg.simulate_hang_rank:
                time.sleep(cfg.timeout_s + 5)  # the others' first collective now waits past its timeout
            first = False
            with dog.guard(what):
                t0 = time.perf_counter()
                c.run()
                t_first = _agree(time.perf_counter() - t0, env)
            ok = c.correct()
            iters = cfg.iters or int(min(50, max(1, cfg.time_budget_s / max(t_first, 1e-6))))
            with dog.guard(f"{iters} x {what}", cfg.timeout_s + 10 * iters * t_first):
                dist.barrier()
                t0 = time.perf_counter()
                for _ in range(iters):
                    c.run()
                t = _agree((time.perf_counter() - t0) / iters, env)  # the slowest rank sets the pace
                c.fill()  # check again after the timed runs, on fresh inputs
                c.run()
                ok = c.correct() and ok
                ok = _agree(0.0 if ok else 1.0, env) == 0.0  # wrong on any rank -> wrong
            algbw = nbytes / t / 1e9
            rows.append({"op": op, "size_mb": nbytes / MB, "iters": iters, "time_ms": t * 1e3,
                         "algbw_gbs": algbw, "busbw_gbs": algbw * bus_factor(op, env.world_size), "correct": ok})
            del c


def format_table(rows: list[dict]) -> str:
    lines = [f"{'collective':<15} {'size MiB':>10} {'iters':>6} {'time ms':>10} {'algbw GB/s':>11} "
             f"{'busbw GB/s':>11}  check"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['op']:<15} {r['size_mb']:>10.2f}  skipped: {r['skipped']}")
            continue
        lines.append(f"{r['op']:<15} {r['size_mb']:>10.2f} {r['iters']:>6d} {r['time_ms']:>10.3f} "
                     f"{r['algbw_gbs']:>11.3f} {r['busbw_gbs']:>11.3f}  {'ok' if r['correct'] else 'WRONG RESULT'}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for op in OPS:
        pts = [(r["size_mb"], r["busbw_gbs"]) for r in rows if r["op"] == op and "busbw_gbs" in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=op)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (MiB)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def _one_rank_group(env: DistEnv) -> None:
    """DistEnv starts no group for one process; a one-rank check needs one (torchrun set MASTER_ADDR/PORT)."""
    from datetime import timedelta

    cuda = env.device.type == "cuda"
    if cuda:
        torch.cuda.set_device(env.device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1, device_id=env.device if cuda else None,
                            timeout=timedelta(seconds=float(os.environ.get("BANYAN_DIST_TIMEOUT_S", 600))))
    env.owns_group = True


def run(cfg: BenchCommConfig) -> dict:
    """The benchmark body, on every rank of an initialised torchrun job; rank 0 reports."""
    from banyan.parallel import p2p

    env = DistEnv.from_env(cfg.device, flag="--device")
    if env.world_size < 2 and not dist.is_initialized():
        _one_rank_group(env)
    if env.world_size < 2 and env.is_main:
        print("note: one rank: this checks that the backend (and on CUDA the P2P report) starts and that each "
              "collective answers correctly; bus bandwidth is 0 with one rank (use --nproc N >= 2 to measure it)")
    backend = dist.get_backend()
    device_name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu"
    report = p2p.report() if (env.device.type == "cuda" and env.is_main) else None
    result = {"world_size": env.world_size, "nodes": env.num_nodes, "backend": backend, "device": device_name,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "timeout_s": cfg.timeout_s,
              "results": [], "hang": None, "p2p": report}
    out = Path(cfg.out)

    def on_hang(what: str) -> None:
        result["hang"] = f"{what} did not finish within the timeout"
        print(f"rank {env.rank}: HANG: {result['hang']}", file=sys.stderr, flush=True)
        if env.is_main:
            result["advice"] = p2p.advice(report, env.num_nodes, hang=True)
            atomic_write_json(out / "comm.json", result, indent=1, default=str)
            print(format_table(result["results"]))
            why = ("on a multi-GPU box this usually means broken peer-to-peer copies or a wrong network interface"
                   if report is not None else "a peer never joined the collective")
            print(f"HANG: {result['hang']}; {why}. Try:\n  " + "\n  ".join(result["advice"]))
            print(f"partial results: {out / 'comm.json'}", flush=True)
        os._exit(3)  # a hung collective cannot be cancelled; torchrun then stops the other ranks

    measure(cfg, env, Watchdog(cfg.timeout_s, on_hang), result["results"])
    result["advice"] = p2p.advice(report, env.num_nodes, hang=False,
                                  wrong=any(r.get("correct") is False for r in result["results"]))
    if env.is_main:
        print(f"banyan bench comm: {env.world_size} ranks on {env.num_nodes} node(s), backend {backend}, "
              f"device {device_name}")
        if report is not None:
            print(p2p.format_report(report))
        print(format_table(result["results"]))
        for line in result["advice"]:
            print("advice:", line)
        atomic_write_json(out / "comm.json", result, indent=1, default=str)
        plot(result["results"], out / "comm.png", f"{backend}, {env.world_size} ranks, {device_name}")
        print(f"wrote {out / 'comm.json'} and {out / 'comm.png'}")
    env.barrier()
    env.close()
    return result


def main(argv: list[str]) -> int:
    from banyan.parallel.launch import drop_option, launch_torchrun, under_torchrun

    argv = list(argv)
    cfg = parse_cli(BenchCommConfig, argv, prog="banyan bench comm")
    sizes_mb(cfg)  # min_mb <= max_mb: checked here, not in each rank after the launch
    if not under_torchrun():
        n = cfg.nproc or (torch.cuda.device_count() if torch.cuda.device_count() >= 2 else 2)
        # our watchdog (timeout_s) must fire before the process group's own timeout does
        os.environ.setdefault("BANYAN_DIST_TIMEOUT_S", str(int(cfg.timeout_s * 3 + 60)))
        # the ranks do not launch again, so --nproc stays here (torchrun would take it for its --nproc-per-node)
        return launch_torchrun(n, ["bench", "comm", *drop_option(argv, "--nproc")])
    result = run(cfg)
    wrong = any(r.get("correct") is False for r in result["results"])
    return 1 if wrong else 0
