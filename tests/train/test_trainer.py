"""The shared Trainer runs any Task: a toy masked task trains, logs its metrics per counted item,
checkpoints its state and resumes exactly; banyan/train stays small (functions <= 60 lines)."""

import ast
import json
from pathlib import Path

import torch

from banyan.config import RunConfig, load_config
from banyan.train.lm import LMTask
from banyan.train.trainer import Trainer

V = 24


class CopyTask(LMTask):
    """Predict (token + 1) mod V at each position; only even positions are trained, one row not at all."""

    name = "copy"

    def setup(self, cfg, env):
        self.env = env
        cfg.model.vocab_size = V
        self.token_bytes = torch.ones(V, dtype=torch.long)
        self.batches_seen = 0

    def _make(self, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, V, (self.cfg.train.micro_batch, self.cfg.train.seq_len), generator=g)
        labels = (x + 1) % V
        labels[:, 1::2] = -100
        labels[0, :] = -100  # one row fully masked
        return {"input_ids": x, "labels": labels}

    def batch(self, step, micro):
        self.batches_seen += 1
        return self._make(1000 * step + micro)

    def loss(self, model, batch):
        loss_sum, count, _ = super().loss(model, batch)
        with torch.no_grad():
            hits = ((model(batch["input_ids"]).argmax(-1) == batch["labels"]) & (batch["labels"] != -100)).sum()
        return loss_sum, count, {"accuracy": hits.float()}

    def val_batches(self):
        return [self._make(-1 - i) for i in range(2)]

    def state_dict(self):
        return {"batches_seen": self.batches_seen}

    def load_state_dict(self, state):
        self.batches_seen = state["batches_seen"]


def _cfg(out, **train):
    return load_config(RunConfig, overrides={
        "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "max_seq_len": 16}, "out": str(out),
        "train": {"max_steps": 30, "seq_len": 16, "micro_batch": 4, "global_batch_tokens": 128, "eval_every": 10,
                  "log_every": 1, "device": "cpu", **train},
        "optim": {"lr": 1e-2, "warmup_steps": 2}, "checkpoint": {"every": 10},
        "log": {"tensorboard": False, "plots": False, "progress": False}})


def _rows(out):
    return [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_trainer_runs_a_custom_task(tmp_path):
    summary = Trainer(_cfg(tmp_path / "a"), CopyTask(_cfg(tmp_path / "a")), stage="copy").run()
    rows = _rows(tmp_path / "a")
    assert rows[0]["loss"] > 2.5 and rows[-1]["loss"] < rows[0]["loss"] - 1.0
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows if "accuracy" in r)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    assert summary["val_loss"] == [r for r in rows if "val_loss" in r][-1]["val_loss"]
    assert summary["tokens"] == 30 * 2 * 4 * 16  # positions processed, 2 micro-steps per step
    cfg_text = (tmp_path / "a" / "config.toml").read_text()
    assert 'stage = "copy"' in cfg_text and "grad_accum = 2" in cfg_text


class StopsAt20(Trainer):
    def after_step(self, res, lr):
        return super().after_step(res, lr) and self.step < 20


def test_custom_task_resumes_exactly_with_its_state(tmp_path):
    ref = _cfg(tmp_path / "ref")
    Trainer(ref, CopyTask(ref)).run()
    part = _cfg(tmp_path / "part")
    StopsAt20(part, CopyTask(part)).run()  # as if killed right after the step-20 checkpoint
    rest = _cfg(tmp_path / "part")
    rest.resume = True
    task = CopyTask(rest)
    Trainer(rest, task).run()
    want = {r["step"]: r["loss"] for r in _rows(tmp_path / "ref")}
    got = {r["step"]: r["loss"] for r in _rows(tmp_path / "part")}
    assert got == want
    assert task.batches_seen == 30 * 2  # restored from the step-20 checkpoint, then 10 more steps


def test_train_package_functions_stay_short():
    root = Path(__file__).parents[2] / "banyan" / "train"
    long = []
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
    assert len((root / "trainer.py").read_text().splitlines()) <= 400
    assert len((root / "pretrain.py").read_text().splitlines()) < 200


def test_init_from_a_run_takes_its_weights_and_architecture(tiny_data, tmp_path):
    from safetensors.torch import load_file

    from banyan.train import checkpoint as ckpt
    from banyan.train.pretrain import PretrainTask, train
    from trainkit import tiny_run

    train(tiny_run(tiny_data, tmp_path / "a", max_steps=4))
    cfg = tiny_run(tiny_data, tmp_path / "b")
    cfg.model.n_layer, cfg.init = 1, str(tmp_path / "a")  # the source's architecture wins
    trainer = Trainer(cfg, PretrainTask(cfg))
    trainer.setup()
    try:
        assert trainer.par.raw.config.n_layer == 2 and trainer.step == 0
        want = load_file(str(ckpt.latest_checkpoint(tmp_path / "a") / "model.safetensors"))
        got = trainer.par.raw.state_dict()
        assert want and all(torch.equal(got[k], v) for k, v in want.items())
    finally:
        trainer.logger.close()


def test_init_from_a_missing_folder_is_one_clear_error(tiny_data, tmp_path):
    import pytest

    from banyan.errors import CheckpointError
    from banyan.train.pretrain import PretrainTask
    from trainkit import tiny_run

    cfg = tiny_run(tiny_data, tmp_path / "c")
    cfg.init = str(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="--init .*nowhere: no such folder"):
        Trainer(cfg, PretrainTask(cfg)).run()


def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path, lock_holder):
    import pytest

    from banyan.errors import BanyanError
    from banyan.io import FolderLock

    out = tmp_path / "busy"
    holder = lock_holder(out)
    cfg = _cfg(out)
    with pytest.raises(BanyanError, match=f"run folder '{out}' is in use by pid {holder.pid}"):
        Trainer(cfg, CopyTask(cfg)).run()
    assert not (out / "config.toml").exists() and not (out / "metrics.jsonl").exists()
    holder.kill()
    holder.wait()
    with FolderLock(out):  # the kernel dropped the dead holder's lock
        pass
    Trainer(_cfg(out, max_steps=2), CopyTask(_cfg(out, max_steps=2))).run()  # and the lock is released after
    with FolderLock(out):
        pass


def test_resume_falls_back_past_a_torn_checkpoint(tmp_path, capsys):
    import pytest

    from banyan.errors import CheckpointError
    from banyan.train import checkpoint as ckpt

    ref = _cfg(tmp_path / "ref")
    Trainer(ref, CopyTask(ref)).run()
    out = tmp_path / "torn"
    cfg = _cfg(out)
    StopsAt20(cfg, CopyTask(cfg)).run()  # checkpoints at steps 10 and 20
    newest = ckpt.latest_checkpoint(out)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # torn by a crash or a full disk
    cfg = _cfg(out)
    cfg.resume = True
    Trainer(cfg, CopyTask(cfg)).run()
    err = capsys.readouterr().err
    assert "step_000020 is unusable" in err and "resuming from step_000010 instead" in err
    want = {r["step"]: r["loss"] for r in _rows(tmp_path / "ref")}
    assert {r["step"]: r["loss"] for r in _rows(out)} == want  # steps 11-30 re-run exactly
    for ck in ckpt.list_checkpoints(out):  # every checkpoint torn: one clear error
        (ck / "trainer.json").write_text("{not json")
        (ck / "model.safetensors").write_bytes(b"x")
    cfg = _cfg(out)
    cfg.resume = True
    with pytest.raises(CheckpointError, match="no checkpoint in .* can be resumed"):
        Trainer(cfg, CopyTask(cfg)).run()
