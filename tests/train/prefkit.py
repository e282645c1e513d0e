"""Helpers for preference-stage tests: a tiny "SFT run" (a pretraining run has the chat template) and pair files."""

import json

from banyan.config import load_config

from trainkit import tiny_run

LOG = {"tensorboard": False, "wandb": False, "plots": False, "progress": False}


def make_init_run(data, out, seed=1337, steps=2):
    """A 2-step pretraining run: a valid --init source (its checkpoint carries tokenizer + chat template)."""
    from banyan.train.pretrain import train

    train(tiny_run(data, out, max_steps=steps, seed=seed, eval_every=0))
    return out


def easy_pairs(n=16):
    """Explicit-form pairs whose chosen answer is always the same short text (easy to prefer)."""
    prompts = ["Speak", "Hear me", "Proceed", "Famish", "Resolved", "Citizen", "All", "Further"]
    return [{"prompt": f"{prompts[i % 8]} {i}", "chosen": "Speak, speak.", "rejected": f"No, we die {i}."}
            for i in range(n)]


def implicit_pairs(n=8):
    """UltraFeedback-style pairs: whole conversations sharing the user turn."""
    return [{"prompt": f"Q{i}", "score_chosen": 9.0, "score_rejected": 1.0,
             "chosen": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "Speak."}],
             "rejected": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"Die {i}."}]}
            for i in range(n)]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def stage_run(cls, section, init, data, out, **kw):
    """A config of `cls` (DPOConfig, RewardConfig) on the tiny init run: 6 steps of 4 pairs."""
    train = {"max_steps": 6, "seq_len": 48, "micro_batch": 4, "eval_every": 3, "eval_batches": 2,
             "log_every": 1, "sample_every": 0, "dtype": "fp32", **kw.pop("train", {})}
    return load_config(cls, overrides={
        "init": str(init), "out": str(out), "train": train, "log": LOG,
        "optim": {"lr": kw.pop("lr", 3e-3), "warmup_steps": 1}, "checkpoint": {"every": 3, "keep_last": 2},
        section: {"data": str(data), **kw},
    })
