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


# --- the CPU (eager host) terms: hand-computed cases -------------------------------------------------------------


def test_measured_sdpa_rate_replaces_the_gemm_curve_for_attention():
    c = tiny()  # 2 heads of 32
    flat = S.Throughput(100.0, 0.0, 1000.0, 0.0, attn_tflops=0.01)  # SDPA at 10 GFLOP/s, no falloff
    fwd, bwd = S.attention_seconds(c, 3, 128, flat, 4)
    assert fwd == pytest.approx(3 * 2 * 4 * 128 * 128 * 32 / 2 / 1e10) and bwd == pytest.approx(2.5 * fwd)
    curved = S.Throughput(100.0, 0.0, 1000.0, 0.0, attn_tflops=0.01, attn_d0=32.0)  # f(128)^2 f(32) = 0.64 x 0.5
    assert S.attention_seconds(c, 3, 128, curved, 4)[0] == pytest.approx(fwd / (0.8 * 0.8 * 0.5))


def test_eager_elementwise_bytes_are_counted_op_by_op():
    c = tiny()  # llama D=64, F=128, dq=64, dkv=32
    # fwd: norms 2*28*64 + rotary 40*(64+32) + output copy 8*64 + SwiGLU 20*128 + adds 24*64
    # bwd: norms 2*84*64 + rotary 60*96 + SwiGLU 36*128 + copy 8*64 + grad sums 60*64
    assert S.eager_elementwise_bytes_per_token(c) == (3584 + 3840 + 512 + 2560 + 1536,
                                                      10752 + 5760 + 4608 + 512 + 3840)
    g = ModelConfig(arch="gpt2", vocab_size=256, n_layer=2, n_head=2, d_model=64, max_seq_len=128)
    g.finalize()  # F = 4D = 256: fwd LN 16*64 + GELU 8*256 + copy 8*64 + adds 24*64; bwd 40*64 + 12*256 + 56*64
    assert S.eager_elementwise_bytes_per_token(g) == (1024 + 2048 + 512 + 1536, 2560 + 3072 + 512 + 1536 + 1536)
    # an eager device (dispatch_s > 0) moves those bytes at elem_bw_gbs; the loss moves its 3 passes
    tp = S.Throughput(1e9, 0.0, 100.0, 0.0, elem_bw_gbs=1.0, dispatch_s=1e-15)
    st = S.micro_batch_seconds(c, M.param_specs(c), 1, 100, "none", 0, tp, 4)
    fwd_b, bwd_b = S.eager_elementwise_bytes_per_token(c)
    assert st.memory == pytest.approx((2 * 100 * (fwd_b + bwd_b) + 3 * 100 * S.loss_bytes_per_token(c, 4)) / 1e9)


def test_eager_dispatch_is_paid_per_aten_call_with_recompute():
    c = tiny()
    tp = S.Throughput(1e9, 0.0, 1e12, 0.0, dispatch_s=1e-3)
    (bf, bb), (of, ob) = S.EAGER_OPS["llama"]
    st = S.micro_batch_seconds(c, M.param_specs(c), 1, 8, "none", 0, tp, 4)
    assert st.launch == pytest.approx((2 * bf + of + 2 * bb + ob) * 1e-3)
    full = S.micro_batch_seconds(c, M.param_specs(c), 1, 8, "full", 0, tp, 4)
    assert full.launch - st.launch == pytest.approx(2 * bf * 1e-3)  # each block's forward runs again
    # fused AdamW: 2 calls per step whatever the tensor count; bytes at the copy bandwidth
    specs = M.param_specs(c)
    base = S.optimizer_seconds(c, specs, "adamw", 1, 1.0, 1e12)
    assert base == pytest.approx(32 * M.n_params(specs) / 1e9)
    assert S.optimizer_seconds(c, specs, "adamw", 1, 1.0, 1e12, dispatch_s=1e-3) == pytest.approx(base + 2e-3)


def test_fresh_mmap_outputs_fault_and_tanh_gelu_costs_arithmetic():
    c = ModelConfig(arch="llama", vocab_size=4096, n_layer=2, n_head=2, n_kv_head=1, d_model=64, d_ff=128,
                    max_seq_len=128)
    c.finalize()
    tp = S.Throughput(1e9, 0.0, 10.0, 0.0, dispatch_s=1e-6, page_fault_s=1e-9)
    # 2048 tokens x 4096 x 4 B = 32 MiB logits: at glibc's mmap threshold, fresh pages (2 writes fwd, 2 bwd)
    assert S.host_extra_seconds(c, 2048, tp) == pytest.approx((2 * 2**25 * 1e-9,) * 2)
    assert S.host_extra_seconds(c, 2047, tp) == (0.0, 0.0)  # below it the heap recycles the block
    assert S.host_extra_seconds(c, 2048, S.Throughput(1e9, 0.0, 10.0, 0.0)) == (0.0, 0.0)  # GPU: none
    g = ModelConfig(arch="gpt2", vocab_size=256, n_layer=3, n_head=2, d_model=64, max_seq_len=128)
    g.finalize()  # F = 256; GELU fwd+bwd at 5 ns/value vs its 20 B at 10 GB/s = 2 ns: 3 ns extra, half each pass
    tg = S.Throughput(1e9, 0.0, 10.0, 0.0, dispatch_s=1e-6, gelu_s=5e-9, gelu_tanh_s=8e-9)
    fwd, bwd = S.host_extra_seconds(g, 100, tg)
    assert fwd == bwd == pytest.approx(3 * 100 * 256 * 3e-9 / 2)
    g.activation = "gelu_tanh"  # imported HF GPT-2: the tanh form, 8 - 2 = 6 ns extra
    assert S.host_extra_seconds(g, 100, tg)[0] == pytest.approx(3 * 100 * 256 * 6e-9 / 2)


def test_gemm_layout_rates_scale_forward_and_weight_gradient():
    tp = S.Throughput(1.0, 0.0, 1e12, 0.0)
    slow = S.Throughput(1.0, 0.0, 1e12, 0.0, nt_rate=0.5, tn_rate=0.25)
    f, b = S.weight_matmul_seconds(100, 30, 20, tp, 4)
    sf, sb = S.weight_matmul_seconds(100, 30, 20, slow, 4)
    one = 2 * 100 * 30 * 20 / 1e12  # every one of the three GEMMs has the same FLOPs
    assert (f, b) == (pytest.approx(one), pytest.approx(2 * one))
    assert (sf, sb) == (pytest.approx(2 * one), pytest.approx(one + 4 * one))


def test_fit_rate_recovers_the_sdpa_curve():
    r, d0 = 20e9, 45.0
    f = lambda d: d / (d + d0)  # noqa: E731
    dims = [(96, 96, 64), (192, 192, 48), (384, 384, 64)]
    samples = [(1e9 * i, d, 1e9 * i / (r * f(d[0]) * f(d[1]) * f(d[2]))) for i, d in enumerate(dims, 1)]
    fr, fd0, err = C.fit_rate(samples)
    assert fr == pytest.approx(0.02, rel=0.02) and fd0 == pytest.approx(45.25, rel=0.01) and err < 0.01


def test_cpu_calibration_stores_the_eager_costs_and_old_entries_still_load(tmp_path):
    ops = C.calibrate_cpu_ops(0.01, attn_shapes=[(1, 2, 32, 16), (1, 2, 64, 16)], elem_mb=1)
    assert all(ops[k] > 0 for k in ("attn_tflops", "elem_bw_gbs", "dispatch_s", "gelu_s", "gelu_tanh_s"))
    assert ops["page_fault_s"] >= 0 and len(ops["attention"]) == 2
    entry = {"matmul_tflops": 0.05, "d0": 16.0, "mem_bw_gbs": 10.0, "launch_s": 5e-6, "nt_rate": 0.9, **ops}
    path = tmp_path / "cal.json"
    C.store("cpu/1t", entry, path)
    tp = C.throughput_for(gpu("cpu"), "cpu/1t", path)
    assert tp.dispatch_s == pytest.approx(ops["dispatch_s"]) and tp.launch_s == 0.0  # dispatch replaces launches
    assert tp.attn_tflops == pytest.approx(ops["attn_tflops"]) and tp.nt_rate == 0.9 and tp.tn_rate == 1.0
    C.store("NVIDIA H200", {"preset": "h200", "matmul_tflops": 700.0, "d0": 64.0, "mem_bw_gbs": 4000.0,
                            "launch_s": 5e-6}, path)  # an entry from before these fields: the GPU model
    old = C.throughput_for(gpu("h200"), None, path)
    assert (old.launch_s, old.dispatch_s, old.attn_tflops, old.nt_rate, old.page_fault_s) == (5e-6, 0.0, 0.0, 1.0, 0.0)


def _aten_calls(arch: str, n_layer: int) -> tuple[int, int]:
    """Top-level aten calls of one forward and one backward of a tiny model (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from banyan.losses import lm_loss
    from banyan.model import build_model

    c = ModelConfig(arch=arch, vocab_size=64, n_layer=n_layer, n_head=2, n_kv_head=1 if arch == "llama" else 2,
                    d_model=32, max_seq_len=16)
    c.finalize()
    m = build_model(c, device="cpu")
    x = torch.randint(0, 64, (1, 9))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("FWD"):
            loss = lm_loss(m.hidden_states(x[:, :-1]), m.output_weight(), x[:, 1:])
        with record_function("BWD"):
            loss.backward()
    events = prof.events()
    spans = {e.name: (e.time_range.start, e.time_range.end) for e in events if e.name in ("FWD", "BWD")}
    counts = {"FWD": 0, "BWD": 0}
    for e in events:
        if e.name.startswith("aten::") and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")):
            for k, (s, t) in spans.items():
                counts[k] += s <= e.time_range.start <= t
    return counts["FWD"], counts["BWD"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_eager_op_counts_match_the_profiler(arch):
    """EAGER_OPS against the real model: a change to the blocks' code that adds or removes ops shows here."""
    f1, b1 = _aten_calls(arch, 1)
    f2, b2 = _aten_calls(arch, 2)
    (bf, bb), (of, ob) = S.EAGER_OPS[arch]
    assert (f2 - f1, b2 - b1) == pytest.approx((bf, bb), rel=0.15)
    assert (2 * f1 - f2, 2 * b1 - b2) == pytest.approx((of, ob), rel=0.15)
