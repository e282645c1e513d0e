"""The per-operation speed model (banyan.plan.speed) and calibration (banyan.plan.calibrate), on hand-computed cases."""

import json
import math

import pytest
import torch

from banyan.errors import BanyanError
from banyan.hardware import gpu
from banyan.model.config import ModelConfig
from banyan.plan import calibrate as C
from banyan.plan import memory as M
from banyan.plan import speed as S

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> ModelConfig:
    c = ModelConfig(arch="llama", vocab_size=256, n_layer=2, n_head=2, n_kv_head=1, d_model=64, d_ff=128,
                    max_seq_len=128, **kw)
    c.finalize()
    return c


def test_matmul_roofline_compute_memory_and_small_dim_falloff():
    flat = S.Throughput(100.0, 0.0, 1000.0, 0.0)  # 100 TFLOP/s, no falloff, 1 TB/s
    assert S.matmul_seconds(1000, 1000, 1000, flat, 2) == pytest.approx(2e9 / 1e14)  # compute-bound
    # a matrix-vector product is memory-bound: 2 B x (4096 + 4096^2 + 4096) at 1e12 B/s
    assert S.matmul_seconds(1, 4096, 4096, flat, 2) == pytest.approx(2 * (2 * 4096 + 4096**2) / 1e12)
    curved = S.Throughput(100.0, 100.0, 1000.0, 0.0)  # each dim of 100 at half rate: 1/8 overall
    assert S.matmul_seconds(100, 100, 100, curved, 2) == pytest.approx(2e6 / (1e14 / 8))
    assert S.dim_efficiency(300, 100) == pytest.approx(0.75)


def test_attention_is_causal_flash_flops_with_backward_2_5x():
    c, tp = tiny(), S.Throughput(100.0, 0.0, 1000.0, 0.0)
    fwd, bwd = S.attention_seconds(c, 3, 128, tp, 2)
    assert fwd == pytest.approx(3 * 2 * 4 * 128 * 128 * 32 / 2 / 1e14)
    assert bwd == pytest.approx(2.5 * fwd)


def test_matmul_time_at_full_rate_equals_6n_plus_attention_flops():
    """No falloff, infinite bandwidth, no launch cost: time = (6 N_matmul + 7 L T D) tokens / R."""
    c = tiny()
    specs = M.param_specs(c)
    tp = S.Throughput(1.0, 0.0, 1e12, 0.0)
    b, t = 2, 128
    st = S.micro_batch_seconds(c, specs, b, t, "none", 0, tp, 4)
    n_mm = M.matmul_params(c, specs)
    tokens = b * t
    expect = tokens * (6 * n_mm + c.n_layer * 7 * t * c.d_model) / 1e12  # attention fwd 2TD, bwd 5TD per token
    assert st.total == pytest.approx(expect, rel=1e-6)
    assert st.matmul + st.attention == pytest.approx(expect, rel=1e-6)
    # full recompute re-runs each block's forward: + L (2 N_block + 2 T D) per token
    full = S.micro_batch_seconds(c, specs, b, t, "full", 0, tp, 4).total
    extra = tokens * c.n_layer * (2 * M.block_matmul_params(c, specs) + 2 * t * c.d_model) / 1e12
    assert full - st.total == pytest.approx(extra, rel=1e-6)


def test_memory_bound_ops_move_the_bytes_counted_per_token():
    c = tiny()
    # D=64, F=128, hd=32, dkv=32, e=2: norms 2(6*64 + 8*64) + rope 2*2*(64+32) + 2*2*32 + swiglu 3*2*128
    # + adds 2*12*64 = 1792 + 512 + 768 + 1536
    assert S.elementwise_bytes_per_token(c, 2) == (4608, 14)
    assert S.loss_bytes_per_token(c, 2) == (2 + 4) * 256 + 8 * 256
    specs = M.param_specs(c)
    tp = S.Throughput(1e9, 0.0, 1.0, 0.0)  # 1 GB/s, compute free
    st = S.micro_batch_seconds(c, specs, 1, 100, "none", 0, tp, 2)
    casts = 6 * M.n_params(specs)  # autocast reads fp32 weights and writes bf16 copies once per micro-batch
    expect = (3 * 100 * (2 * 4608 + S.loss_bytes_per_token(c, 2)) + casts) / 1e9
    assert st.memory == pytest.approx(expect, rel=1e-9)
    # the matmuls are memory-bound here too (roofline): a [100, 64] x [64, 64] GEMM moves 2(6400 + 4096 + 6400) B
    assert S.matmul_seconds(100, 64, 64, tp, 2) == pytest.approx(2 * (6400 + 4096 + 6400) / 1e9)
    assert st.total > st.memory


def test_launch_cost_is_per_kernel_forward_once_backward_twice():
    c = tiny()
    tp = S.Throughput(1e9, 0.0, 1e12, 1e-3)
    st = S.micro_batch_seconds(c, M.param_specs(c), 1, 8, "none", 0, tp, 4)
    kernels = 14 + 1 + 7  # elementwise + attention + 7 matmuls per Llama block
    assert st.launch == pytest.approx(c.n_layer * 3 * kernels * 1e-3)
    assert st.total == pytest.approx(st.launch, rel=1e-3)


def test_small_micro_batches_lose_throughput_on_a_gpu_preset():
    c = ModelConfig(arch="llama", vocab_size=32000, n_layer=16, n_head=16, d_model=2048, max_seq_len=2048)
    c.finalize()
    specs, tp = M.param_specs(c), C.preset_throughput(gpu("rtx4090"))
    per_token = [S.micro_batch_seconds(c, specs, b, 256, "none", 0, tp).total / (b * 256) for b in (1, 8)]
    assert per_token[0] > 1.1 * per_token[1]


def test_hsdp_adds_a_cross_node_all_reduce_of_the_shard():
    inner = S.comm_seconds("zero3", 4, 10**9, 10**7, 10, 1, 0.05, 0.04, 20.0)
    h = S.comm_seconds("hsdp", 8, 10**9, 10**7, 10, 1, 0.05, 0.04, 20.0, per_node=4, net_gbs=10.0)
    cross = 2 * (1 / 2) * 4 * 10**9 / 4 / 10e9  # 2 nodes, fp32 shard of 1/4 of the grads at 10 GB/s = 0.1 s
    assert h.total_s == pytest.approx(inner.total_s + cross)
    assert h.exposed_s == pytest.approx(inner.exposed_s + cross - 0.04)


def test_presets_and_constant_mfu():
    tp = C.preset_throughput(gpu("h200"))
    assert tp.matmul_tflops == pytest.approx(0.8 * 989) and tp.mem_bw_gbs == pytest.approx(0.85 * 4800)
    assert tp.d0 == C.GPU_D0


def test_fit_curve_recovers_rate_and_half_dim():
    r, d0 = 50e12, 32.0
    f = lambda d: d / (d + d0)  # noqa: E731
    shapes = [(4096, 4096, 4096), (64, 4096, 4096), (4096, 16, 4096), (128, 128, 128)]
    samples = [(m, n, k, 2 * m * n * k / (r * f(m) * f(n) * f(k))) for m, n, k in shapes]
    fr, fd0, err = C.fit_curve(samples)
    assert fr == pytest.approx(50.0, rel=1e-6) and fd0 == pytest.approx(32.0) and err < 1e-9
    with pytest.raises(BanyanError, match="at least 2"):
        C.fit_curve(samples[:1])


def test_calibrate_stores_and_later_plans_use_it(tmp_path):
    path = tmp_path / "cal.json"
    entry = C.calibrate(torch.device("cpu"), shapes=[(64, 64, 64), (32, 128, 64)], min_s=0.01, copy_mb=4)
    assert entry["matmul_tflops"] > 0 and entry["mem_bw_gbs"] > 0 and entry["launch_s"] > 0
    assert entry["preset"] == "cpu" and len(entry["matmuls"]) == 2 and entry["bus_gbs"] is None
    C.store("cpu/1t", entry, path)
    C.store("NVIDIA GeForce RTX 4090", dict(entry, preset="rtx4090", matmul_tflops=33.0), path)
    devices = C.read_calibration(path)
    assert set(devices) == {"cpu/1t", "NVIDIA GeForce RTX 4090"}
    assert C.throughput_for(gpu("cpu"), "cpu/1t", path).matmul_tflops == pytest.approx(entry["matmul_tflops"])
    tp = C.throughput_for(gpu("rtx4090"), None, path)  # by preset name: `--gpus 4x4090` plans use it
    assert tp.matmul_tflops == 33.0 and tp.source.startswith("calibrated")
    assert C.throughput_for(gpu("h100"), None, path).source.startswith("preset")


def test_a_torn_calibration_file_is_named(tmp_path):
    bad = tmp_path / "cal.json"
    bad.write_text("{not json")
    with pytest.raises(BanyanError, match="cal.json"):
        C.read_calibration(bad)
    bad.write_text(json.dumps({"x": 1}))
    with pytest.raises(BanyanError, match="'devices'"):
        C.read_calibration(bad)
    assert C.read_calibration(tmp_path / "absent.json") == {}
    assert math.isfinite(C.preset_throughput(gpu("cpu")).matmul_tflops)


def test_cli_calibrate_then_validate_shapes_reports_each(capsys, tmp_path):
    from banyan.cli import main as banyan

    cal = str(tmp_path / "cal.json")
    assert banyan(["plan", "--calibrate", "--device", "cpu", "--calibration", cal, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["key"] == "cpu/1t" and res["path"] == cal and len(res["matmuls"]) == len(C.CPU_SHAPES)
    rc = banyan(["plan", "--model", "shakespeare", "--validate", "--device", "cpu", "--calibration", cal,
                 "--shapes", "1x16,2x32", "--steps", "2", "--optim", "adamw", "--ac", "none"])
    out = capsys.readouterr().out
    assert rc == 0 and "calibrated" in out
    table = out[out.index("shape "):].splitlines()[1:]
    assert [ln.split()[0] for ln in table] == ["1x16", "2x32"]
    assert banyan(["plan", "--model", "shakespeare", "--validate", "--shapes", "4by8"]) == 2
    assert "--shapes" in capsys.readouterr().err


def test_constant_mfu_flag_keeps_the_old_estimate(capsys):
    from banyan.cli import main as banyan

    argv = ["plan", "--model", "llama-1b", "--gpus", "4x4090", "--optim", "adamw", "--ac", "none",
            "--strategy", "ddp", "--json"]
    assert banyan([*argv, "--mfu", "0.4"]) == 0
    d = json.loads(capsys.readouterr().out)
    row, w = d["rows"][0], d["workload"]
    tokens_mb = row["micro_batch"] * w["seq"]
    assert d["speed_model"]["source"] == "assumed MFU 0.4"
    fpt = d["model"]["flops_per_token"]
    assert row["compute_s"] == pytest.approx(row["accum"] * tokens_mb * fpt / (165e12 * 0.4))
    assert banyan(argv) == 0
    d2 = json.loads(capsys.readouterr().out)
    assert d2["speed_model"]["source"].startswith("preset") and d2["rows"][0]["compute_s"] != row["compute_s"]
