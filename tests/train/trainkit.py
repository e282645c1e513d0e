"""Helpers shared by trainer tests: a tiny run config and the same run as CLI flags."""

from banyan.config import RunConfig, load_config


def tiny_run(data, out, **train) -> RunConfig:
    """A ~30k-parameter Llama run that takes well under a second per few steps on CPU."""
    t = {"max_steps": 12, "seq_len": 32, "micro_batch": 4, "eval_every": 6, "eval_batches": 2,
         "log_every": 1, "sample_every": 0}
    t.update(train)
    return load_config(RunConfig, overrides={
        "model": {"arch": "llama", "n_layer": 2, "n_head": 2, "n_kv_head": 1, "d_model": 32, "max_seq_len": 64},
        "data": {"path": str(data)}, "out": str(out), "train": t,
        "optim": {"lr": 3e-3, "warmup_steps": 2}, "checkpoint": {"every": 4, "keep_last": 2},
        "log": {"tensorboard": False, "wandb": False, "plots": False, "progress": False},
    })


def cli_args(data, out, extra=()):
    """The same run as tiny_run, as CLI flags (for subprocess tests)."""
    return ["pretrain", "--model.arch", "llama", "--model.n_layer", "2", "--model.n_head", "2",
            "--model.n_kv_head", "1", "--model.d_model", "32", "--model.max_seq_len", "64",
            "--data.path", str(data), "--out", str(out), "--train.max_steps", "12", "--train.seq_len", "32",
            "--train.micro_batch", "4", "--train.eval_every", "6", "--train.eval_batches", "2",
            "--train.log_every", "1", "--optim.lr", "3e-3", "--optim.warmup_steps", "2",
            "--checkpoint.every", "4", "--log.no_tensorboard", "--log.no_plots",
            "--log.no_progress", *extra]
