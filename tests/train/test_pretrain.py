"""The trainer end to end on a tiny model: overfitting, exact resume after SIGKILL, SIGTERM,
NaN handling, atomic checkpoints, metrics fields and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from banyan.errors import BanyanError
from banyan.config import ConfigError, load_config, RunConfig
from banyan.train import checkpoint as ckpt
from banyan.train.metrics import read_metrics
from banyan.train.pretrain import train

from trainkit import cli_args, tiny_run


def run_cli(args, env_extra=None, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "banyan", *args], capture_output=True, text=True, env=env,
                          timeout=180, **kw)


def losses(out):
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if r.get("loss") is not None}


def test_overfits_a_fixed_batch():
    from banyan.config import ModelConfig
    from banyan.model import build_model
    from banyan.train.optim import build_optimizer
    from banyan.config import OptimConfig
    from banyan.train.lm import causal_lm_loss
    from banyan.train.step import train_step
    from banyan.train.task import labelled_count

    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=50, n_layer=2, n_head=2, d_model=32, max_seq_len=32))
    opt = build_optimizer(model, OptimConfig(lr=2e-2, weight_decay=0.0))
    x = torch.randint(0, 50, (4, 17))
    first = None
    for _ in range(60):
        r = train_step(model, opt, [{"input_ids": x[:, :-1], "labels": x[:, 1:]}], causal_lm_loss, labelled_count, 1.0)
        first = first if first is not None else r.loss
    assert first > 3.5 and r.loss < 0.3, (first, r.loss)


def test_run_writes_metrics_config_checkpoints(tiny_data, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_run(tiny_data, out))
    rows = read_metrics(out / "metrics.jsonl")
    for key in ("step", "loss", "lr", "tokens_per_s", "tokens", "grad_norm", "mfu"):
        assert key in rows[0], key
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [6, 12]
    assert all(r["val_bpb"] > 0 for r in evals)
    assert (out / "config.toml").is_file() and "git_commit" in (out / "config.toml").read_text()
    names = [p.name for p in ckpt.list_checkpoints(out)]
    assert names == ["step_000008", "step_000012"]  # keep_last=2
    assert (out / "checkpoints" / "latest").read_text() == "step_000012"
    assert summary["step"] == 12 and summary["val_bpb"] == pytest.approx(evals[-1]["val_bpb"])


def test_exact_resume_after_sigkill(tiny_data, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    r = run_cli(cli_args(tiny_data, ref, ["--model.dropout", "0.1"]))
    assert r.returncode == 0, r.stderr
    r = run_cli(cli_args(tiny_data, killed, ["--model.dropout", "0.1"]), {"BANYAN_FAULT": "kill@10"})
    assert r.returncode == -signal.SIGKILL
    assert ckpt.latest_checkpoint(killed).name == "step_000008"
    r = run_cli(cli_args(tiny_data, killed, ["--model.dropout", "0.1", "--resume"]))
    assert r.returncode == 0, r.stderr
    a, b = losses(ref), losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert a == b  # bit-identical per-step losses (dropout on: RNG state restored too)


def test_sigterm_checkpoints_and_exits_cleanly(tiny_data, tmp_path):
    out = tmp_path / "term"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = cli_args(tiny_data, out, ["--train.max_steps", "100000", "--checkpoint.every", "0"])
    proc = subprocess.Popen([sys.executable, "-m", "banyan", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGTERM" in err
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None
    step = json.loads((latest / "trainer.json").read_text())["step"]
    assert 3 <= step < 100000


def test_nan_loss_skips_then_stops(tiny_data, tmp_path):
    out = tmp_path / "nan"
    r = run_cli(cli_args(tiny_data, out, ["--train.max_bad_steps", "3"]), {"BANYAN_FAULT": "nan@5"})
    assert r.returncode == 2
    assert "non-finite" in r.stderr and "3 non-finite losses in a row" in r.stderr
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if r.get("skipped")] == [6, 7, 8]
    assert ckpt.latest_checkpoint(out).name == "step_000004"  # the good checkpoint is kept


def test_skipped_step_leaves_weights_unchanged():
    from banyan.config import ModelConfig, OptimConfig
    from banyan.model import build_model
    from banyan.train.optim import build_optimizer
    from banyan.train.step import train_step

    model = build_model(ModelConfig(vocab_size=20, n_layer=1, n_head=2, d_model=16, max_seq_len=16))
    opt = build_optimizer(model, OptimConfig(lr=1e-2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 20, (2, 9))
    r = train_step(model, opt, [{"input_ids": x[:, :-1], "labels": x[:, 1:]}],
                   lambda m, b: (m(b["input_ids"]).sum() * float("inf"), b["labels"].numel(), {}),
                   lambda b: torch.tensor(b["labels"].numel()))
    assert not r.finite
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_crash_mid_checkpoint_keeps_previous(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "crash"
    cfg = tiny_run(tiny_data, out, max_steps=4)
    train(cfg)
    good = ckpt.latest_checkpoint(out)
    from banyan.model import build_model

    model = build_model(cfg.model.finalize())

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "write_config", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(out, 8, model, None, {}, cfg)
    assert ckpt.latest_checkpoint(out) == good
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_000004"]
    ckpt.load_checkpoint(good, model, None, cfg)  # still loadable


def test_bad_inputs(tiny_data, tmp_path, capsys):
    from banyan.cli import main

    def err(args):
        rc = main(args)
        return rc, capsys.readouterr().err

    # missing data folder
    rc, e = err(cli_args(tmp_path / "nope", tmp_path / "o1"))
    assert rc == 2 and "banyan data prepare" in e
    # global batch that does not divide into micro-batches
    rc, e = err(cli_args(tiny_data, tmp_path / "o2", ["--train.global_batch_tokens", "1000"]))
    assert rc == 2 and "global_batch_tokens" in e
    # --resume with no checkpoint
    rc, e = err(cli_args(tiny_data, tmp_path / "o3", ["--resume"]))
    assert rc == 2 and "no complete checkpoint" in e
    # model vocab smaller than the data's tokenizer (data made for another tokenizer)
    rc, e = err(cli_args(tiny_data, tmp_path / "o4", ["--model.vocab_size", "3"]))
    assert rc == 2 and "vocab_size" in e
    # and the real process exits non-zero with one line
    r = run_cli(cli_args(tmp_path / "nope", tmp_path / "o5"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0


def test_incompatible_checkpoint_and_no_overwrite(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(tiny_run(tiny_data, out, max_steps=4))
    before = {p: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()}
    with pytest.raises(BanyanError, match="already holds a run"):
        train(tiny_run(tiny_data, out, max_steps=4))
    cfg = tiny_run(tiny_data, out, max_steps=8)
    cfg.model.n_layer = 3
    cfg.resume = True
    with pytest.raises(ConfigError, match="model.n_layer is 2 there, 3 in this run"):
        train(cfg)
    after = {p: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()}
    assert before == after


def test_plots_sample_and_bench(tiny_data, tmp_path, capsys):
    from banyan.cli import main

    out = tmp_path / "run"
    cfg = tiny_run(tiny_data, out, max_steps=6)
    cfg.log.plots = True
    train(cfg)
    for name in ("loss.png", "lr.png", "throughput.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    capsys.readouterr()
    args = ["sample", "--ckpt", str(out), "--prompt", "First", "--max_new_tokens", "20", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("First")  # same seed, same text
    assert main(["sample", "--ckpt", str(tmp_path / "none")]) == 2
    assert main(["bench", "train", "--model.n_layer", "1", "--model.d_model", "32", "--model.n_head", "2",
                 "--model.vocab_size", "64", "--train.seq_len", "16", "--train.micro_batch", "2",
                 "--warmup", "1", "--steps", "2", "--optim.name", "adamw"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens_per_step"] == 32 and result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1
