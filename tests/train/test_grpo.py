"""`banyan grpo` on a tiny chat model: reward rises on a learnable task, resume mid-rollout is exact, bad input."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from banyan.config import load_config
from banyan.data.reasoning import RewardError
from banyan.errors import BanyanError, ConfigError
from banyan.train import grpo
from banyan.train.grpo import GRPOConfig, GRPOTask
from banyan.train.metrics import read_metrics

from prefkit import LOG, easy_pairs, make_init_run, stage_run, write_jsonl

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def sft(tiny_data, tmp_path_factory):
    return make_init_run(tiny_data, tmp_path_factory.mktemp("sft") / "run")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Steadier on shared cores."""


def grpo_run(init, out, steps=6, lr=1e-2, plots=False, **section):
    return load_config(GRPOConfig, overrides={
        "init": str(init), "out": str(out), "log": {**LOG, "plots": plots},
        "train": {"max_steps": steps, "micro_batch": 8, "eval_every": 0, "log_every": 1,
                  "dtype": "fp32"},  # a learning test with a threshold: the same numerics on every CPU
        "optim": {"lr": lr, "warmup_steps": 1, "schedule": "constant"}, "checkpoint": {"every": 3, "keep_last": 3},
        "grpo": {"max_new_tokens": 6, "prompts_per_step": 4, "group_size": 4, "eval_prompts": 4, "max_digits": 1,
                 **section}})


def rows(out):
    return [r for r in read_metrics(Path(out) / "metrics.jsonl") if r.get("reward_mean") is not None]


def test_tiny_grpo_raises_reward_on_a_learnable_task(sft, tmp_path):
    out = tmp_path / "run"
    summary = grpo.train(grpo_run(sft, out, steps=22, lr=3e-2, plots=True, reward="grpo_rewards:starts_lower"))
    r = rows(out)
    before = sum(x["reward_mean"] for x in r[:4]) / 4
    after = sum(x["reward_mean"] for x in r[-4:]) / 4
    assert before < 0.4 and after > 0.8, (before, after)
    last = r[-1]
    for key in ("reward_std", "frac_groups_equal", "entropy", "completion_len", "clip_frac", "frac_stopped"):
        assert key in last
    assert last["entropy"] < r[0]["entropy"] and last["clip_frac"] == 0.0  # one update per rollout: ratio 1
    assert 0 <= summary["val_pass_at_1"] <= 1 and "val_pass_at_4" in summary and summary["samples_per_s"] > 0
    assert (out / "plots" / "grpo.png").stat().st_size > 1000
    assert (out / "checkpoints" / "step_000022" / "tokenizer_config.json").is_file()  # still a chat model


def test_resume_mid_rollout_is_exact(sft, tmp_path, monkeypatch):
    kw = dict(steps=6, ppo_epochs=2, beta=0.1, kl="k3", clip_low=0.1, clip_high=0.1, advantage="rloo", lr=3e-2,
              reward="grpo_rewards:starts_lower")
    ref_out, crash_out = tmp_path / "ref", tmp_path / "crash"
    grpo.train(grpo_run(sft, ref_out, **kw))

    def crash(step, rank, out):
        if step == 5:
            raise KeyboardInterrupt("simulated crash")
    monkeypatch.setattr("banyan.train.trainer.faults.maybe_kill", crash)
    with pytest.raises(KeyboardInterrupt):
        grpo.train(grpo_run(sft, crash_out, **kw))
    monkeypatch.undo()
    cfg = grpo_run(sft, crash_out, **kw)
    cfg.resume = True  # from step 3: step 4 reuses the rollout made at step 3, read from the checkpoint
    grpo.train(cfg)
    a, b = rows(ref_out), rows(crash_out)
    assert [x["step"] for x in a] == [x["step"] for x in b] == list(range(1, 7))
    for key in ("loss", "reward_mean", "kl", "clip_frac", "entropy"):
        assert [x[key] for x in a] == [x[key] for x in b], key
    assert a[0]["kl"] == pytest.approx(0, abs=1e-6) and a[0]["clip_frac"] == 0  # policy == reference == old
    assert any(x["clip_frac"] > 0 for x in a[1::2])  # second update of a rollout: ratios moved, some clipped


def test_a_rollout_without_signal_leaves_weights_and_optimizer_untouched(sft, tmp_path):
    """All-equal rewards and beta 0: zero advantages, so AdamW must not step (momentum, weight decay)."""
    from safetensors.torch import load_file

    cfg = grpo_run(sft, tmp_path / "flat", steps=3, lr=1e-2, reward="grpo_rewards:constant")
    cfg.optim.weight_decay = 0.1  # decoupled decay alone would move every weight on a step
    task = GRPOTask(cfg)
    trainer = grpo.Trainer(cfg, task, stage="grpo")
    summary = trainer.run()
    before = load_file(str(sft / "checkpoints" / "step_000002" / "model.safetensors"))
    after = {k: v.detach() for k, v in task.policy.state_dict().items()}
    assert before.keys() <= after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not trainer.optimizer.state  # no Adam moments, no step count
    assert summary["skipped_no_signal"] == 3
    r = rows(tmp_path / "flat")
    assert [x["frac_groups_equal"] for x in r] == [1.0] * 3 and r[-1]["skipped_no_signal"] == 3
    assert task.has_signal([task.batch(2, 0)]) is False
    task.s.beta = 0.1  # a KL term is a signal even when every advantage is 0
    assert task.has_signal([task.batch(2, 0)]) is True


def test_dr_grpo_counts_a_constant_and_rewards_from_the_verifier(sft, tmp_path):
    cfg = grpo_run(sft, tmp_path / "dr", steps=2, advantage="dr_grpo")
    task = GRPOTask(cfg)
    s = grpo.Trainer(cfg, task, stage="grpo").run()  # keep the task to inspect its batches
    text = task.sample(task.policy, 2)
    assert text.startswith("What is ") and "(grade " in text
    b = task.batch(1, 0)
    assert int(task.count(b)) == 8 * 6  # rows x max_new_tokens, whatever the completions' lengths
    assert int((b["labels"] != -100).sum()) <= 8 * 6
    assert s["val_score"] == s["val_score"] and rows(tmp_path / "dr")[0]["reward_mean"] >= 0


def test_reward_model_as_reward_source(sft, tmp_path):
    from banyan.train import reward
    from banyan.train.reward import RewardConfig

    prefs = write_jsonl(tmp_path / "p.jsonl", easy_pairs(8))
    rm = tmp_path / "rm"
    reward.train(stage_run(RewardConfig, "reward", sft, prefs, rm, val_fraction=0.0, train={"max_steps": 2}))
    out = tmp_path / "rlhf"
    grpo.train(grpo_run(sft, out, steps=2, reward_model=str(rm)))
    r = rows(out)
    assert len(r) == 2 and all(x["reward_std"] > 0 for x in r)  # real-valued scores differ within groups


def test_evaluate_checkpoint_on_any_run(sft):
    from banyan.eval.reasoning import evaluate_checkpoint

    res = evaluate_checkpoint(sft, "arithmetic", n=3, k=2, max_new_tokens=4)
    assert res["n"] == 3 and 0 <= res["pass_at_1"] <= res["pass_at_2"] <= 1


def test_k1_sampling_does_not_overwrite_the_greedy_pass_at_1():
    """k = 1 gives a sampled pass@1: it gets its own key; pass_at_1 stays the greedy figure."""
    from banyan.eval.reasoning import summarize

    res = summarize({"n": 4.0, "pass1": 3.0, "passk": 1.0, "score": 3.0}, k=1)
    assert res["pass_at_1"] == 0.75 and res["pass_at_1_sampled"] == 0.25


def test_token_logps_are_those_of_the_sampling_temperature():
    """softmax(logits / T): the policy that sampled the rollout at temperature T."""
    from banyan.train.rollout import token_logps

    logits = torch.randn(1, 3, 5)
    model = lambda ids: logits  # noqa: E731
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "labels": torch.tensor([[2, -100, 4]])}
    lp, _ = token_logps(model, batch, temperature=0.5)
    want = torch.log_softmax(logits / 0.5, -1)
    assert torch.allclose(lp[0, 0], want[0, 0, 2]) and lp[0, 1] == 0 and torch.allclose(lp[0, 2], want[0, 2, 4])


def test_bad_input(sft, tmp_path):
    plain = tmp_path / "plain_ck"
    shutil.copytree(sft / "checkpoints" / "step_000002", plain)
    (plain / "tokenizer_config.json").unlink()
    with pytest.raises(BanyanError, match="not a chat model"):
        grpo.train(grpo_run(plain, tmp_path / "o1"))
    with pytest.raises(ConfigError, match="did you mean 'arithmetic'"):
        grpo.train(grpo_run(sft, tmp_path / "o2", task="arithmetc"))
    with pytest.raises(ConfigError, match=r"grpo.task countdown: prompts take up to \d+ tokens.*max_seq_len is 64"):
        grpo.train(grpo_run(sft, tmp_path / "o6", task="countdown"))
    with pytest.raises(ConfigError, match="multiple of train.micro_batch"):
        grpo.train(grpo_run(sft, tmp_path / "o3", group_size=3))
    with pytest.raises(ConfigError, match="not both"):
        grpo.train(grpo_run(sft, tmp_path / "o4", reward="grpo_rewards:boom", reward_model=str(sft)))
    with pytest.raises(RewardError, match="grpo_rewards:not_finite returned inf, not a finite number"):
        grpo.train(grpo_run(sft, tmp_path / "o5", reward="grpo_rewards:not_finite"))
    with pytest.raises(ConfigError, match="grpo.beta"):
        grpo.train(grpo_run(sft, tmp_path / "o6", beta=-1.0))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), str(HERE)])}
    out = tmp_path / "boom"
    r = subprocess.run([sys.executable, "-m", "banyan", "grpo", "--init", str(sft), "--train.micro_batch", "8",
                        "--grpo.max_new_tokens", "4", "--log.no_progress", "--log.no_tensorboard",
                        "--grpo.reward", "grpo_rewards:boom", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "grpo_rewards:boom raised RuntimeError: scorer crashed (prompt 'What is" in r.stderr, r.stderr[-2000:]
    assert not list(out.glob("checkpoints/step_*"))  # nothing written half-way


def test_bench_generate_cli(capsys):
    from banyan.cli import main as banyan

    assert banyan(["bench", "generate", "--model.n_layer", "1", "--model.d_model", "32", "--model.n_head", "2",
                   "--model.vocab_size", "64", "--model.max_seq_len", "32", "--rows", "2", "--prompt_len", "4",
                   "--new_tokens", "4", "--repeats", "1", "--train.device", "cpu"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 2 and out["new_tokens"] == 4 and out["ratio"] > 0 and out["n_layer"] == 1
