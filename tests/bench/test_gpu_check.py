"""`make gpu-check`'s orchestration on CPU: time caps, failures recorded and the next part run, the gpu tests
collected and skipped, the markdown summary and its target checks; the HF side of bench train."""

import json
import sys

import pytest
import torch

from banyan.bench import gpu_check, gpu_report

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cpu_run_records_a_timeout_and_goes_on_gpu_tests_skip(tmp_path, capsys):
    rc = gpu_check.main(["--cpu", "--parts", "env,pytest", "--cap", "env=0.2", "--out", str(tmp_path)])
    assert rc == 1  # one part timed out
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    env, tests = report["parts"]["env"], report["parts"]["pytest"]
    assert env["status"] == "timeout" and env["rc"] is None and env["seconds"] < 5
    assert tests["status"] == "ok", tests.get("log_tail")
    counts = tests["result"]["counts"]
    assert counts["skipped"] >= 12 and counts["passed"] == counts["failed"] == counts["error"] == 0
    assert all(t["message"] == "needs CUDA" for t in tests["result"]["tests"])
    md = (tmp_path / "gpu-check.md").read_text()
    assert "| env | timeout |" in md and "skipped" in md and "## Targets (issue 15)" in md
    assert "===== env: timeout" in (tmp_path / "gpu-check.log").read_text()
    assert '"env": "timeout"' in capsys.readouterr().out


def test_bad_part_or_cap_is_an_argument_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--parts", "env,gpu", "--out", str(tmp_path)])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        gpu_check.main(["--cap", "bench=soon", "--out", str(tmp_path)])


def test_targets_are_checked_against_the_figures():
    bench = [{"model": "llama-125m", "seq": 2048, "compile": True, "micro_batch": 8, "tokens_per_s": 9e5,
              "ms_per_step": 18.0, "mfu": 0.55, "peak_mem_mb": 9000.0, "hf": {"tokens_per_s": 6e5},
              "ratio_vs_hf": 1.5},
             {"model": "llama-500m", "seq": 2048, "compile": True, "micro_batch": 8, "tokens_per_s": 2e5,
              "ms_per_step": 80.0, "mfu": 0.41, "peak_mem_mb": 30000.0, "hf": {"tokens_per_s": 1.9e5},
              "ratio_vs_hf": 1.05}]
    rows = [{"quantity": "peak allocated (CUDA)", "predicted": 100.0, "measured": 108.0, "unit": "B", "ratio": 1.08},
            {"quantity": "step time", "predicted": 0.1, "measured": 0.13, "unit": "s", "ratio": 1.3}]
    report = {"parts": {"bench": {"result": bench},
                        "validate": {"result": {"runs": [{"model": "llama-125m", "micro_batch": 8, "seq": 2048,
                                                          "rows": rows, "preset_step_s": 0.12}]}}}}
    lines = gpu_report.targets(report)
    assert "MFU 55.0% (target >= 50%: met)" in lines[0] and "1.50x (target >= 1.1x: met)" in lines[0]
    assert "MFU 41.0% (target >= 50%: missed)" in lines[1] and "1.05x (target >= 1.1x: missed)" in lines[1]
    assert "peak memory measured/predicted 1.080 (within 10%: met)" in lines[2]
    assert "step time measured/predicted 1.300 (within 20%: missed)" in lines[3]
    assert "| llama-500m | 2048 | True | 8 | 200,000 | 41.0% |" in gpu_report.markdown(
        {"mode": "cuda", "started": "now", "parts": {"bench": {"status": "ok", "seconds": 1, "cap_s": 2,
                                                               "rc": 0, "result": bench}}})


TINY = ["--model.arch", "llama", "--model.vocab_size", "256", "--model.n_layer", "2", "--model.n_head", "2",
        "--model.n_kv_head", "1", "--model.d_model", "64", "--model.max_seq_len", "64", "--train.seq_len", "32",
        "--train.micro_batch", "2", "--train.global_batch_tokens", "0", "--optim.name", "adamw",
        "--train.device", "cpu", "--warmup", "1", "--steps", "2"]


def test_hf_side_of_bench_train_runs_the_same_shapes():
    pytest.importorskip("transformers")
    from banyan.bench.gpu_parts import hf_bench
    from banyan.config import parse_cli
    from banyan.train.bench import BenchTrainConfig

    cfg = parse_cli(BenchTrainConfig, TINY)
    cfg.finalize()
    r = hf_bench(cfg, torch.device("cpu"))
    assert r["tokens_per_s"] > 0 and r["ms_per_step"] > 0 and r["peak_mem_mb"] is None


def test_bench_train_compare_hf_interleaves_rounds(tmp_path, capsys):
    """`banyan bench train --compare hf`: per-round times of both sides and their ratio in the JSON."""
    pytest.importorskip("transformers")
    from banyan.cli import main as cli

    out = tmp_path / "b.json"
    assert cli(["bench", "train", *TINY, "--compare", "hf", "--rounds", "2", "--json_out", str(out)]) == 0
    c = json.loads(out.read_text())["compare"]
    assert len(c["rounds"]) == 2 and c["peer"].startswith("transformers ")
    for r in c["rounds"]:
        assert r["ratio"] == pytest.approx(r["hf_ms"] / r["banyan_ms"], rel=1e-2)
    assert c["ratio_min"] <= c["ratio_median"] <= c["ratio_max"]
    capsys.readouterr()
    muon = [a if a != "adamw" else "muon" for a in TINY]
    assert cli(["bench", "train", *muon, "--compare", "hf"]) == 2
    assert "--optim.name adamw" in capsys.readouterr().err
    # HF's GPT-2 always has biases: a bias-free banyan GPT-2 would not be the same model
    assert cli(["bench", "train", *TINY, "--model.arch", "gpt2", "--model.n_kv_head", "0", "--model.no_bias",
                "--compare", "hf"]) == 2
    assert "model.bias false" in capsys.readouterr().err


def test_bench_train_profile_names_the_ops_that_take_the_time(tmp_path, capsys):
    """`--profile N`: the N heaviest operators by self time, heaviest first, shares summing to <= 1."""
    from banyan.cli import main as cli

    out = tmp_path / "p.json"
    assert cli(["bench", "train", *TINY, "--profile", "5", "--json_out", str(out)]) == 0
    rows = json.loads(out.read_text())["profile"]
    assert len(rows) == 5 and rows[0]["ms_per_step"] >= rows[-1]["ms_per_step"] > 0
    assert 0 < sum(r["share"] for r in rows) <= 1.0 + 1e-6
    assert any("mm" in r["op"] for r in rows)  # a transformer step's time is in its matmuls
    assert "ms/step" in capsys.readouterr().err


def test_bench_comm_does_not_pass_nproc_on_to_torchrun():
    from banyan.parallel.launch import drop_option

    assert drop_option(["--nproc", "1", "--max_mb", "4", "--nproc=2", "--out", "x"], "--nproc") == \
        ["--max_mb", "4", "--out", "x"]
    assert sys.executable  # the parts run under this interpreter
