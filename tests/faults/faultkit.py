"""Helpers of the fault suite: a tiny run config, a Trainer that stops early, a resume."""

from banyan.config import RunConfig, load_config
from banyan.train.trainer import Trainer


def tiny_cfg(data, out, resume=False, **train) -> RunConfig:
    """A ~30k-parameter Llama run: 12 steps, checkpoints every 4, the last 2 kept."""
    t = {"max_steps": 12, "seq_len": 32, "micro_batch": 4, "eval_every": 0, "eval_batches": 2,
         "log_every": 1, "sample_every": 0}
    t.update(train)
    return load_config(RunConfig, overrides={
        "model": {"arch": "llama", "n_layer": 2, "n_head": 2, "n_kv_head": 1, "d_model": 32, "max_seq_len": 64},
        "data": {"path": str(data)}, "out": str(out), "train": t, "resume": resume,
        "optim": {"lr": 3e-3, "warmup_steps": 2}, "checkpoint": {"every": 4, "keep_last": 2},
        "log": {"tensorboard": False, "wandb": False, "plots": False, "progress": False},
    })


class StopAt(Trainer):
    """A Trainer that stops (as after a signal) once `stop_at` steps are done."""

    def __init__(self, stop_at, *a, **kw):
        super().__init__(*a, **kw)
        self.stop_at = stop_at

    def after_step(self, res, lr):
        return super().after_step(res, lr) and self.step < self.stop_at


def resume(data, out, **train) -> dict:
    from banyan.train.pretrain import PretrainTask

    cfg = tiny_cfg(data, out, resume=True, **train)
    return Trainer(cfg, PretrainTask(cfg)).run()


def resume_point(data, out) -> int:
    """Set up a --resume of `out` (fallback included) without training; returns the step it resumes at."""
    from banyan.train.pretrain import PretrainTask

    cfg = tiny_cfg(data, out, resume=True)
    trainer = Trainer(cfg, PretrainTask(cfg))
    trainer.setup()
    trainer.logger.close()
    trainer.release()
    return trainer.step


def cli_flags(data, out) -> list[str]:
    """tiny_cfg as `banyan pretrain` flags: the whole config as a TOML file (no preset leaks in)."""
    import tomli_w

    from banyan.config import to_dict

    path = out.parent / f"{out.name}.toml"
    path.write_text(tomli_w.dumps(to_dict(tiny_cfg(data, out))))
    return ["pretrain", "--config", str(path)]


def losses(out) -> dict[int, float]:
    import json

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if r.get("loss") is not None}
