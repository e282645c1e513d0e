"""Helpers for tests/parallel: tiny run configs, torchrun/spawn launchers with hard timeouts, and the
2-rank worker that runs every in-process scenario inside one gloo process group (spawning ranks
costs seconds, so one spawn serves all the parity, resume and bad-input checks)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS = 10
# fp32 pinned: the parity checks are exact (1e-5), and `auto` would be bf16 on a CPU with AMX/AVX512-BF16
TRAIN = {"max_steps": STEPS, "seq_len": 32, "eval_every": 5, "eval_batches": 2, "log_every": 1,
         "sample_every": 0, "device": "cpu", "dtype": "fp32"}
ACCUM_TOKENS = 2 * 4 * 32  # two micro-steps of 4 sequences x 32 tokens per optimizer step
LORA = {"rank": 4, "alpha": 8.0}  # seeded base: no --init, so the reference is the same seed on one process
MODEL = {"arch": "llama", "n_layer": 2, "n_head": 2, "n_kv_head": 1, "d_model": 32, "max_seq_len": 64}


def tiny_run(data, out, micro_batch: int, strategy: str = "auto", resume: bool = False, **extra):
    """A ~40k-parameter Llama run, fp32, checkpoints at steps 5 and 10."""
    from banyan.config import RunConfig, load_config

    over = {"model": dict(MODEL), "data": {"path": str(data)}, "out": str(out), "resume": resume,
            "train": {**TRAIN, "micro_batch": micro_batch}, "optim": {"lr": 3e-3, "warmup_steps": 2},
            "checkpoint": {"every": 5, "keep_last": 2}, "parallel": {"strategy": strategy},
            "log": {"tensorboard": False, "wandb": False, "plots": False, "progress": False}}
    for section, values in extra.items():
        over[section] = {**over.get(section, {}), **values}
    return load_config(RunConfig, overrides=over)


def cli_args(data, out, micro_batch: int, strategy: str) -> list[str]:
    """The same run as tiny_run, as `banyan pretrain` flags: the whole config goes in as a TOML preset
    (so the default preset's choices, e.g. Muon or bf16, do not leak in)."""
    import tomli_w

    from banyan.config import to_dict

    cfg = tiny_run(data, out, micro_batch, strategy)
    path = Path(out).parent / f"{Path(out).name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(to_dict(cfg)))
    return ["pretrain", "--preset", str(path)]


def losses(out) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r["loss"] for r in rows if r.get("loss") is not None}


def val_losses(out) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r["val_loss"] for r in rows if r.get("val_loss") is not None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra) -> dict:
    from banyan.parallel.launch import RESTART_SAFE_STORE

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), RESTART_SAFE_STORE[0]: RESTART_SAFE_STORE[1],
           **extra}
    env.pop("RANK", None)
    return env


def run_procs(cmds: list[list[str]], env: dict, timeout: float) -> list[subprocess.CompletedProcess]:
    """Start several commands together, wait for all with one deadline; kill the process groups on timeout."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True) for c in cmds]
    deadline = time.monotonic() + timeout
    outs = []
    for p, c in zip(procs, cmds):
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    os.killpg(q.pid, signal.SIGKILL)
            out, err = p.communicate()
            raise AssertionError(f"timed out after {timeout}s: {' '.join(c)}\n{err[-3000:]}") from None
        outs.append(subprocess.CompletedProcess(c, p.returncode, out, err))
    return outs


def torchrun(nproc: int, args: list[str], extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *extra, "-m", "banyan", *args]


# ----------------------------------------------------------------------------- spawned 2-rank worker
def spawn(fn, args: tuple, nprocs: int, timeout: float) -> None:
    """torch.multiprocessing with a deadline: a hung rank fails the test instead of hanging CI."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise AssertionError(f"spawned ranks did not finish within {timeout}s")


def _outcome(fn) -> dict:
    """Run one scenario on this rank: {'ok': True} or the error type and message."""
    from banyan.parallel.env import QuietExit

    try:
        fn()
        return {"ok": True}
    except QuietExit:
        return {"ok": False, "type": "QuietExit", "msg": ""}
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "type": type(e).__name__, "msg": str(e), "tb": traceback.format_exc()[-2000:]}


def worker(rank: int, world: int, port: int, data: str, root: str, single_run: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WANDB_MODE="offline")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from banyan.train.pretrain import train

    root_p = Path(root)
    results = {}
    for strategy in ("ddp", "zero1", "zero2", "zero3"):
        results[strategy] = _outcome(lambda: train(tiny_run(data, root_p / strategy, 2, strategy)))
    # the one-process reference run's step-5 checkpoint (safetensors + optimizer.pt) resumed on 2 ranks
    for dst in ("zero3", "zero1"):
        name = f"one_to_{dst}"
        if rank == 0:
            rewind(Path(single_run), root_p / name, 5)
        dist.barrier()
        results[name] = _outcome(lambda: train(tiny_run(data, root_p / name, 2, dst, resume=True)))
    # gradient accumulation (2 micro-steps, grads synced on the last only) and FSDP bf16 mixed precision
    for strategy in ("ddp", "zero2"):
        results[f"{strategy}_accum"] = _outcome(lambda: train(tiny_run(
            data, root_p / f"{strategy}_accum", 2, strategy, train={"global_batch_tokens": ACCUM_TOKENS})))
    # LoRA under zero3: adapters sharded with their blocks, adapter-only DCP checkpoints
    results["zero3_lora"] = _outcome(lambda: train(tiny_run(data, root_p / "zero3_lora", 2, "zero3", lora=LORA)))
    results["zero3_bf16"] = _outcome(lambda: train(tiny_run(data, root_p / "zero3_bf16", 2, "zero3",
                                                            parallel={"mixed_precision": True})))
    # resume the zero3 run's step-5 checkpoint on 2 ranks as ddp, and the ddp one as zero2
    for src, dst in (("zero3", "ddp"), ("ddp", "zero2")):
        name = f"{src}_to_{dst}"
        if rank == 0:
            rewind(root_p / src, root_p / name, 5)
        dist.barrier()
        results[name] = _outcome(lambda: train(tiny_run(data, root_p / name, 2, dst, resume=True)))
    # SIGTERM reaching only rank 1 (at step 3, after that step's check): both ranks save step 4 and stop
    from banyan.train import faults

    real_kill = faults.maybe_kill
    if rank == 1:
        faults.maybe_kill = lambda step, r, out: os.kill(os.getpid(), signal.SIGTERM) if step == 3 else None
    results["sigterm_rank1"] = _outcome(lambda: train(tiny_run(data, root_p / "sigterm", 2, "zero2")))
    faults.maybe_kill = real_kill
    # bad input: every rank must stop; rank 0 says why, the others stay quiet
    lr = 3e-3 if rank == 0 else 1e-3
    results["mismatch"] = _outcome(lambda: train(tiny_run(data, root_p / "bad_mismatch", 2, "ddp",
                                                          optim={"lr": lr})))
    results["global_batch"] = _outcome(lambda: train(tiny_run(data, root_p / "bad_batch", 2, "ddp",
                                                              train={"global_batch_tokens": 32 * 2 * 3})))
    results["offload_on_cpu"] = _outcome(lambda: train(tiny_run(data, root_p / "bad_offload", 2, "zero3",
                                                                parallel={"cpu_offload": True})))
    if rank == 0:
        rewind(root_p / "zero3", root_p / "bad_model", 5)
    dist.barrier()
    results["wrong_model"] = _outcome(lambda: train(tiny_run(data, root_p / "bad_model", 2, "zero3", resume=True,
                                                             model={"n_layer": 3})))
    results["bench"] = _outcome(lambda: _bench_check(rank, world))
    import trainer_checks

    results["token_weighted"] = _outcome(lambda: trainer_checks.token_weighted(rank, world))
    results["meta_zero3"] = _outcome(lambda: trainer_checks.meta_zero3(rank, world))
    results["hf_zero3"] = _outcome(lambda: trainer_checks.hf_zero3(rank, world, root))
    (root_p / f"results_rank{rank}.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


def _bench_check(rank: int, world: int) -> None:
    """The collectives of `banyan bench comm` give the exact answer, and a corrupted buffer is caught."""
    from banyan.parallel.bench_comm import BenchCommConfig, Collective, Watchdog, measure
    from banyan.parallel.env import DistEnv

    env = DistEnv.from_env("cpu")
    rows: list[dict] = []
    cfg = BenchCommConfig(min_mb=0.0625, max_mb=0.25, iters=2)
    measure(cfg, env, Watchdog(30, lambda what: os._exit(9)), rows)
    assert len(rows) == 6 and all(r["correct"] and r["busbw_gbs"] > 0 for r in rows), rows
    for op in ("all_reduce", "all_gather", "reduce_scatter"):
        c = Collective(op, 1024, env)
        c.fill()
        c.run()
        assert c.correct()
        c.buf[7] += 1  # one wrong element must be noticed
        assert not c.correct()


def rewind(src: Path, dst: Path, step: int) -> None:
    """Copy a run folder as it was right after checkpoint `step` (later checkpoints and metrics dropped)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    ck = dst / "checkpoints"
    for p in ck.glob("step_*"):
        if int(p.name.split("_")[1]) > step:
            shutil.rmtree(p)
    (ck / "latest").write_text(f"step_{step:06d}")
