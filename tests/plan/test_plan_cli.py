"""`banyan plan` end to end: table with a recommendation, JSON, flag spellings, errors, --validate."""

import json

import pytest
import torch

from banyan.cli import main as banyan

PLAN_1B = ["plan", "--model", "llama-1b", "--gpus", "4x4090", "--interconnect", "pcie4", "--p2p", "off"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run(capsys, *argv):
    rc = banyan(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_llama_1b_on_four_4090s_prints_a_recommendation(capsys):
    rc, out, _ = run(capsys, *PLAN_1B)
    assert rc == 0
    assert "Recommendation:" in out and "zero3" in out and "P2P off" in out


def test_json_parses_and_covers_every_configuration(capsys):
    rc, out, _ = run(capsys, *PLAN_1B, "--json")
    d = json.loads(out)
    assert rc == 0 and len(d["rows"]) == 4 * 2 * 3  # strategies x optimizers x AC modes
    best = d["recommendation"]
    assert best["fits"] and best["mem_gb"]["total"] <= 24
    assert best["tokens_per_s"] == max(r["tokens_per_s"] for r in d["rows"] if r["fits"])
    rows = {(r["strategy"], r["optim"], r["ac"]): r for r in d["rows"]}
    ddp, z3 = rows["ddp", "adamw", "none"]["mem_gb"], rows["zero3", "adamw", "none"]["mem_gb"]
    assert z3["params"] == pytest.approx(ddp["params"] / 4)
    # recompute costs time: full AC is slower per step than none at the same strategy
    assert rows["ddp", "adamw", "full"]["compute_s"] > rows["ddp", "adamw", "none"]["compute_s"]
    assert d["model"]["params"] == pytest.approx(1.04e9, rel=0.02)


def test_underscore_and_hyphen_spellings_agree(capsys):
    common = ["--optim", "adamw", "--ac", "none", "--json"]
    _, a, _ = run(capsys, *PLAN_1B, "--global-batch-tokens", "262144", "--seq", "1024", *common)
    _, b, _ = run(capsys, *PLAN_1B, "--global_batch_tokens", "262144", "--seq", "1024", *common)
    assert json.loads(a) == json.loads(b) and json.loads(a)["workload"]["global_batch_tokens"] == 262144


def test_unknown_gpu_names_the_closest(capsys):
    rc, _, err = run(capsys, "plan", "--model", "llama-1b", "--gpus", "4x4080")
    assert rc == 2 and "did you mean 'rtx4090'" in err


def test_unsupported_optimizer_strategy_pair_is_an_error(capsys):
    rc, _, err = run(capsys, *PLAN_1B, "--optim", "muon", "--strategy", "zero3")
    assert rc == 2 and "muon" in err and "zero3" in err


def test_a_model_that_cannot_fit_says_what_would(capsys):
    rc, out, _ = run(capsys, "plan", "--model", "llama-1b", "--gpus", "1xcustom", "--gpu_tflops", "50",
                     "--gpu_mem_gb", "8", "--json")
    d = json.loads(out)
    assert rc == 1 and d["recommendation"] is None and not any(r["fits"] for r in d["rows"])
    advice = " ".join(d["advice"])
    assert "more GPUs" in advice and "offload" in advice and "fewer parameters" in advice


def test_bad_global_batch_is_named(capsys):
    rc, _, err = run(capsys, *PLAN_1B, "--global_batch_tokens", "1000")
    assert rc == 2 and "--global_batch_tokens (1000)" in err


def test_validate_matches_real_tensors(capsys, tmp_path):
    argv = ["plan", "--model", "shakespeare", "--vocab_size", "256", "--validate", "--steps", "2",
            "--micro_batch", "2", "--seq", "32", "--json"]
    rc, out, _ = run(capsys, *argv)
    res = json.loads(out[out.index("{"):])
    assert rc == 0 and res["device"] == "cpu"
    got = {q: (pred, meas) for q, pred, meas, _ in res["rows"]}
    for q in ("params", "grads", "optimizer state"):
        assert got[q][0] == got[q][1], q
    pred, meas = got["saved activations"]
    assert abs(pred - meas) / meas < 0.001
    assert got["step time"][1] > 0


def test_config_flag_is_the_recipe_to_plan(capsys):
    from banyan.config import PRESET_DIR

    common = ["--gpus", "4x4090", "--optim", "adamw", "--ac", "none", "--json"]
    _, by_name, _ = run(capsys, "plan", "--model", "llama-1b", *common)
    _, by_file, _ = run(capsys, "plan", "--config", str(PRESET_DIR / "llama-1b.toml"), *common)
    assert json.loads(by_file) == json.loads(by_name) and json.loads(by_name)["model"]["name"] == "llama-1b"


def test_unknown_flag_exits_2_naming_it(capsys):
    with pytest.raises(SystemExit) as e:
        banyan([*PLAN_1B, "--gpu_count", "4"])
    assert e.value.code == 2 and "--gpu_count" in capsys.readouterr().err


def test_preset_flag_points_at_model(capsys):
    rc, _, err = run(capsys, "plan", "--preset", "llama-1b", "--gpus", "4x4090")
    assert rc == 2 and "banyan plan takes --config FILE.toml" in err


def test_lora_rank_shrinks_grads_and_optimizer_state(capsys):
    rc, out, _ = run(capsys, *PLAN_1B, "--json", "--strategy", "ddp", "--optim", "adamw", "--ac", "none")
    full = json.loads(out)["rows"][0]["mem_gb"]
    rc2, out2, _ = run(capsys, *PLAN_1B, "--json", "--strategy", "ddp", "--optim", "adamw", "--ac", "none",
                       "--lora_rank", "16")
    lora = json.loads(out2)["rows"][0]["mem_gb"]
    assert rc == rc2 == 0
    assert lora["params"] > full["params"]  # base + adapters
    assert lora["grads"] < full["grads"] / 20 and lora["optim"] < full["optim"] / 20
