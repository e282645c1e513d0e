"""`banyan dpo` end to end on a tiny model: log(2) at step 0, learning, the reference cache, resume, bad input."""

import math
import os
import subprocess
import sys

import pytest

from banyan.errors import BanyanError
from banyan.train import dpo
from banyan.train.dpo import DPOConfig, DPOTask
from banyan.train.metrics import read_metrics
from banyan.train.trainer import Trainer

from prefkit import easy_pairs, implicit_pairs, make_init_run, stage_run, write_jsonl


@pytest.fixture(scope="module")
def sft(tiny_data, tmp_path_factory):
    return make_init_run(tiny_data, tmp_path_factory.mktemp("sft") / "run")


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("prefs") / "pairs.jsonl", easy_pairs())


def rows(out):
    return [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def test_policy_equal_reference_gives_log2_then_learns(sft, prefs, tmp_path):
    out = tmp_path / "dpo"
    summary = dpo.train(stage_run(DPOConfig, "dpo", sft, prefs, out, val_data=str(prefs), beta=0.5, lr=1e-2))
    first, last = rows(out)[0], rows(out)[-1]
    assert first["step"] == 1 and first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["chosen_reward"] == pytest.approx(0, abs=1e-5) and first["margin"] == pytest.approx(0, abs=1e-5)
    assert first["reward_accuracy"] == 0  # equal rewards: no pair is ranked right yet
    assert last["loss"] < math.log(2) - 0.05
    assert summary["val_reward_accuracy"] >= 0.75 and summary["val_margin"] > 0
    assert summary["val_loss"] < math.log(2)
    ck = out / "checkpoints" / "step_000006"
    assert (ck / "tokenizer_config.json").is_file()  # the output is again a chat model


def test_ref_cache_equals_recomputation_and_is_keyed_by_weights(sft, prefs, tiny_data, tmp_path):
    cache = tmp_path / "cache"
    common = dict(val_data=str(prefs), beta=0.5, train={"max_steps": 2, "eval_every": 0})
    mem_out = tmp_path / "mem"
    dpo.train(stage_run(DPOConfig, "dpo", sft, prefs, mem_out, **common))

    def cached(init, name):
        task = DPOTask(cfg := stage_run(DPOConfig, "dpo", init, prefs, tmp_path / name, ref_cache=True,
                                        cache_dir=str(cache), **common))
        summary = Trainer(cfg, task, stage="dpo").run()
        return task, summary

    t1, s1 = cached(sft, "c1")
    assert not t1.cache_reused and len(list(cache.iterdir())) == 1
    for a, b in zip(rows(mem_out), rows(tmp_path / "c1")):  # cached log-probs == scoring in memory
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["margin"] == pytest.approx(b["margin"], abs=1e-6)
    t2, s2 = cached(sft, "c2")
    assert t2.cache_reused and len(list(cache.iterdir())) == 1 and s2["val_loss"] == pytest.approx(s1["val_loss"])
    other = make_init_run(tiny_data, tmp_path / "other_sft", seed=7)  # other weights, same shape and tokenizer
    t3, _ = cached(other, "c3")
    assert not t3.cache_reused and len(list(cache.iterdir())) == 2


@pytest.mark.parametrize("loss", ["ipo", "simpo"])
def test_ipo_and_simpo_on_implicit_pairs(sft, tmp_path, loss):
    data = write_jsonl(tmp_path / "implicit.jsonl", implicit_pairs())
    out = tmp_path / loss
    dpo.train(stage_run(DPOConfig, "dpo", sft, data, out, loss=loss, beta=0.5, val_fraction=0.25, nll_alpha=0.1,
                        train={"max_steps": 3}))
    r = rows(out)
    assert all(math.isfinite(x["loss"]) for x in r) and "val_reward_accuracy" in r[-1]
    if loss == "ipo":  # zero margin at step 0: (0 - 1/(2 beta))^2 = 1, plus the NLL term
        assert r[0]["loss"] > 1.0


def test_resume_mid_dpo_is_exact(sft, prefs, tmp_path, monkeypatch):
    ref_out, crash_out = tmp_path / "ref", tmp_path / "crash"
    dpo.train(stage_run(DPOConfig, "dpo", sft, prefs, ref_out, label_smoothing=0.1))

    def crash(step, rank, out):
        if step == 5:
            raise KeyboardInterrupt("simulated crash")
    monkeypatch.setattr("banyan.train.trainer.faults.maybe_kill", crash)
    with pytest.raises(KeyboardInterrupt):
        dpo.train(stage_run(DPOConfig, "dpo", sft, prefs, crash_out, label_smoothing=0.1))
    monkeypatch.undo()
    cfg = stage_run(DPOConfig, "dpo", sft, prefs, crash_out, label_smoothing=0.1)
    cfg.resume = True
    dpo.train(cfg)
    a, b = rows(ref_out), rows(crash_out)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_bad_input(sft, prefs, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", easy_pairs(2) + [{"prompt": "p", "chosen": "x"}])
    with pytest.raises(BanyanError, match=r"bad\.jsonl:3: no field 'rejected'"):
        dpo.train(stage_run(DPOConfig, "dpo", sft, bad, tmp_path / "o1"))
    plain = tmp_path / "plain_ck"  # a checkpoint without a chat template
    import shutil

    shutil.copytree(sft / "checkpoints" / "step_000002", plain)
    (plain / "tokenizer_config.json").unlink()
    with pytest.raises(BanyanError, match="not a chat model"):
        dpo.train(stage_run(DPOConfig, "dpo", plain, prefs, tmp_path / "o2"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    same = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "a"}])
    r = subprocess.run([sys.executable, "-m", "banyan", "dpo", "--init", str(sft), "--dpo.data", str(same),
                        "--out", str(tmp_path / "o3")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "same.jsonl:1: 'chosen' is identical to 'rejected'" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "banyan", "dpo", "--dpo.data", str(prefs), "--out",
                        str(tmp_path / "o4")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "--init" in r.stderr


def test_cache_key_changes_with_data_template_and_weights(sft, prefs):
    import torch

    from banyan.data.prefs import load_pairs
    from banyan.train.dpo import chat_source
    from banyan.train.pairs import PairData
    from banyan.train.reference import data_fingerprint, weights_fingerprint

    _, tok, template = chat_source(stage_run(DPOConfig, "dpo", sft, prefs, "unused"))
    pairs = load_pairs(str(prefs))
    a = PairData(pairs, tok, template, 48, tok.pad_id)
    b = PairData(pairs[:-1], tok, template, 48, tok.pad_id)
    key = data_fingerprint(template, {"train": a}, 48, "cpu:fp32")
    assert key == data_fingerprint(template, {"train": PairData(pairs, tok, template, 48, tok.pad_id)}, 48, "cpu:fp32")
    assert key != data_fingerprint(template, {"train": b}, 48, "cpu:fp32")
    assert key != data_fingerprint(template + " ", {"train": a}, 48, "cpu:fp32")
    assert key != data_fingerprint(template, {"train": a}, 48, "cuda:bf16")
    m = torch.nn.Linear(3, 2)
    before = weights_fingerprint(m)
    with torch.no_grad():
        m.weight[0, 0] += 1e-6
    assert weights_fingerprint(m) != before


def test_init_never_trained_on_chats_is_warned_not_refused(sft, prefs, tmp_path, capsys):
    """A pretrained checkpoint has the chat template in its tokenizer but no chat stage in its config.toml:
    chat_source says so on stderr and goes on (GRPO from a base model is a real use: R1-Zero)."""
    import shutil

    from banyan.train.dpo import chat_source, chat_trained

    base = sft / "checkpoints" / "step_000002"  # the fixture is a pretrain run
    assert not chat_trained(base)
    chat_source(stage_run(DPOConfig, "dpo", base, prefs, "unused"))
    assert "never trained on chats" in capsys.readouterr().err
    chat = tmp_path / "chat_ck"
    shutil.copytree(base, chat)
    with (chat / "config.toml").open("a") as f:
        f.write('\n[sft]\ndata = "chats.jsonl"\n')
    assert chat_trained(chat)
    chat_source(stage_run(DPOConfig, "dpo", chat, prefs, "unused"))
    assert "never trained on chats" not in capsys.readouterr().err
