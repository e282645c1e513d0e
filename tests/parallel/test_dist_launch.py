"""Real launches through torchrun: `--nproc` self-launch, a killed rank recovered by --max-restarts,
a two-node job simulated with two torchrun agents and c10d rendezvous on localhost (hsdp), and
`banyan bench comm` on 2 gloo processes. Every launch has a hard deadline."""

import json
import math
import os
import sys

import pytest

from dist_helpers import STEPS, child_env, cli_args, free_port, losses, run_procs, torchrun

REL = 1e-5


def assert_traj(got, ref):
    assert sorted(got) == list(range(1, STEPS + 1)), sorted(got)
    for s in ref:
        assert math.isclose(got[s], ref[s], rel_tol=REL), (s, got[s], ref[s])


def test_killed_rank_recovers_with_max_restarts(dist_data, reference, tmp_path):
    """rank 1 is SIGKILLed after step 7; torchrun restarts both ranks, which resume from step 5."""
    out = tmp_path / "elastic"
    cmd = torchrun(2, cli_args(dist_data, out, 2, "zero2"), ["--standalone", "--max-restarts=1"])
    (r,) = run_procs([cmd], child_env(BANYAN_FAULT="kill@7:rank1"), timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / ".fault-fired-rank1").read_text() == "7"
    assert "resuming at step 5" in r.stdout
    assert_traj(losses(out), losses(reference))
    assert json.loads((out / "summary.json").read_text())["step"] == STEPS


def test_two_nodes_hsdp_matches_one_process(dist_data, reference, tmp_path):
    """Two torchrun agents (--nnodes 2, 2 ranks each) meet through c10d on localhost; hsdp = 2 replicas x 2 shards."""
    out = tmp_path / "twonode"
    port = free_port()
    args = cli_args(dist_data, out, 1, "hsdp")
    common = ["--nnodes=2", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=banyan-test"]
    cmds = [torchrun(2, args, [*common, f"--rdzv_conf=is_host={host}"]) for host in (1, 0)]
    results = run_procs(cmds, child_env(), timeout=300)
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    log = "".join(r.stdout for r in results)
    assert "strategy hsdp: asked for; mesh 2 replicas x 2 shards" in log
    assert log.count("banyan pretrain:") == 1  # only global rank 0 prints
    assert_traj(losses(out), losses(reference))


@pytest.mark.slow
def test_nproc_self_launch_and_bad_batch_message(dist_data, tmp_path):
    """`banyan pretrain --nproc 2` runs torchrun itself; a global batch that does not divide by
    world x micro-batch is reported once, by rank 0, and every rank exits."""
    out = tmp_path / "selflaunch"
    args = cli_args(dist_data, out, 2, "ddp") + ["--nproc", "2", "--train.global_batch_tokens", "192"]
    (r,) = run_procs([[sys.executable, "-m", "banyan", *args]], child_env(), timeout=180)
    assert r.returncode != 0
    assert "launching:" in r.stderr and "--nproc_per_node=2" in r.stderr
    assert r.stderr.count("must be a multiple of micro_batch*seq_len*world_size") == 1, r.stderr[-3000:]
    assert not (out / "config.toml").exists()


def test_bench_comm_two_gloo_processes(tmp_path):
    out = tmp_path / "comm"
    cmd = [sys.executable, "-m", "banyan", "bench", "comm", "--min_mb", "0.25", "--max_mb", "0.5", "--factor", "2",
           "--iters", "3", "--out", str(out)]
    (r,) = run_procs([cmd], child_env(), timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "backend gloo" in r.stdout and "busbw GB/s" in r.stdout
    data = json.loads((out / "comm.json").read_text())
    assert data["world_size"] == 2 and data["hang"] is None
    rows = data["results"]
    assert {r["op"] for r in rows} == {"all_reduce", "all_gather", "reduce_scatter"}
    assert all(r["correct"] and r["busbw_gbs"] > 0 for r in rows)
    assert (out / "comm.png").stat().st_size > 1000


@pytest.mark.slow
def test_bench_comm_reports_a_hang(tmp_path):
    """Rank 1 enters its first collective only after the timeout: rank 0 reports a hang and exits."""
    out = tmp_path / "hang"
    cmd = [sys.executable, "-m", "banyan", "bench", "comm", "--min_mb", "1", "--max_mb", "1", "--timeout_s", "3",
           "--simulate_hang_rank", "1", "--out", str(out)]
    (r,) = run_procs([cmd], child_env(), timeout=120)
    assert r.returncode != 0
    assert "HANG: all_reduce of 1 MiB" in r.stdout
    assert json.loads((out / "comm.json").read_text())["hang"].startswith("all_reduce of 1 MiB")


def test_watchdog_fires_on_a_blocked_call():
    import time

    from banyan.parallel.bench_comm import Watchdog

    seen = []
    dog = Watchdog(0.2, seen.append)
    with dog.guard("fast"):
        pass
    with dog.guard("blocked"):
        time.sleep(0.6)
    time.sleep(0.1)
    assert seen == ["blocked"]
    assert os.environ.get("RANK") is None  # nothing here leaked torchrun variables into the test process
