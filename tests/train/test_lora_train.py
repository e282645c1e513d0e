"""LoRA on the shared Trainer: frozen base, adapter-only optimizer and checkpoints, exact resume,
--init base, export merged into plain HF weights, bad targets -> exit 2."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from banyan.train import checkpoint as ckpt
from banyan.train.pretrain import PretrainTask, train
from banyan.train.trainer import Trainer

from test_trainer import CopyTask, StopsAt20, _cfg, _rows
from trainkit import cli_args, tiny_run

LORA = {"rank": 4, "alpha": 8.0, "targets": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"}


def lora_run(data, out, **train_kw):
    cfg = tiny_run(data, out, **train_kw)
    cfg.lora.rank, cfg.lora.alpha = LORA["rank"], LORA["alpha"]
    return cfg


class Watched(Trainer):
    """Keeps the weights right after set-up and at the end, and the optimizer's state keys."""

    def setup(self):
        super().setup()
        self.before = {k: v.clone() for k, v in self.par.raw.state_dict().items()}

    def teardown(self):
        self.after = {k: v.clone() for k, v in self.par.raw.state_dict().items()}
        self.state_ids = {id(p) for p in self.optimizer.state}
        return super().teardown()


def test_training_changes_adapters_only_and_checkpoints_are_small(tiny_data, tmp_path):
    train(tiny_run(tiny_data, tmp_path / "base", max_steps=4))
    base_ck = ckpt.latest_checkpoint(tmp_path / "base")
    cfg = lora_run(tiny_data, tmp_path / "lora", max_steps=4)
    cfg.init = str(tmp_path / "base")
    trainer = Watched(cfg, PretrainTask(cfg))
    trainer.run()
    raw, before, after = trainer.par.raw, trainer.before, trainer.after
    base = load_file(str(base_ck / "model.safetensors"))
    assert all(torch.equal(before[k], v) for k, v in base.items())  # base loaded from the --init source
    adapters = {id(p) for n, p in raw.named_parameters() if "lora_" in n}
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == adapters
    assert trainer.state_ids == adapters  # optimizer state only for the adapters
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed and all("lora_" in k for k in changed)  # base bit-identical
    assert any(k.endswith("lora_B") for k in changed)
    ck = ckpt.latest_checkpoint(tmp_path / "lora")
    assert not (ck / "model.safetensors").exists()
    assert set(load_file(str(ck / ckpt.ADAPTERS))) == {k for k in after if "lora_" in k}
    meta = json.loads((ck / "trainer.json").read_text())
    assert meta["lora_base"] == str(base_ck.resolve())
    small = (ck / ckpt.ADAPTERS).stat().st_size + (ck / "optimizer.pt").stat().st_size
    full = (base_ck / "model.safetensors").stat().st_size + (base_ck / "optimizer.pt").stat().st_size
    assert small < full / 2, (small, full)


def test_lora_resume_is_exact_on_a_custom_task(tmp_path):
    def cfg_of(out):
        c = _cfg(out)
        c.lora.rank, c.lora.alpha = 2, 4.0
        return c

    ref = cfg_of(tmp_path / "ref")
    Trainer(ref, CopyTask(ref)).run()
    part = cfg_of(tmp_path / "part")
    StopsAt20(part, CopyTask(part)).run()
    rest = cfg_of(tmp_path / "part")
    rest.resume = True
    Trainer(rest, CopyTask(rest)).run()
    want = {r["step"]: r["loss"] for r in _rows(tmp_path / "ref")}
    got = {r["step"]: r["loss"] for r in _rows(tmp_path / "part")}
    assert got == want and len(want) == 30
    a = load_file(str(ckpt.latest_checkpoint(tmp_path / "ref") / ckpt.ADAPTERS))
    b = load_file(str(ckpt.latest_checkpoint(tmp_path / "part") / ckpt.ADAPTERS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the seeded base: a resume under another seed would rebuild another base
    other = cfg_of(tmp_path / "part")
    other.resume, other.train.seed, other.train.max_steps = True, 7, 40
    with pytest.raises(ckpt.CheckpointError, match="train.seed 1337"):
        Trainer(other, CopyTask(other)).run()
    plain = _cfg(tmp_path / "part")  # resuming without the same --lora is refused
    plain.resume, plain.train.max_steps = True, 40
    with pytest.raises(ckpt.CheckpointError, match="lora.rank is 2 there, 0 in this run"):
        Trainer(plain, CopyTask(plain)).run()


class StopsAt4(Trainer):
    def after_step(self, res, lr):
        return super().after_step(res, lr) and self.step < 4


def test_lora_resume_with_an_init_base_is_exact(tiny_data, tmp_path):
    train(tiny_run(tiny_data, tmp_path / "base", max_steps=4))

    def cfg_of(out, **kw):
        c = lora_run(tiny_data, out, max_steps=6, eval_every=3, **kw)
        c.init = str(tmp_path / "base")
        return c

    train(cfg_of(tmp_path / "ref"))
    part = cfg_of(tmp_path / "part")
    StopsAt4(part, PretrainTask(part)).run()
    rest = cfg_of(tmp_path / "part")
    rest.resume, rest.init = True, ""  # the base comes from the checkpoint's pointer
    train(rest)
    rows = lambda out: {r["step"]: r.get("loss") for r in _rows(out) if r.get("loss") is not None}
    assert rows(tmp_path / "part") == rows(tmp_path / "ref") and len(rows(tmp_path / "ref")) == 6


def test_bad_target_is_exit_2(tiny_data, tmp_path, capsys):
    from banyan.cli import main

    rc = main(cli_args(tiny_data, tmp_path / "x", ["--lora.rank", "4", "--lora.targets", "q_proj,qkv"]))
    err = capsys.readouterr().err
    assert rc == 2 and "unknown module name 'qkv'" in err and "q_proj" in err
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_export_of_a_lora_run_is_its_forward_in_transformers(tiny_data, tmp_path):
    """Seeded base (no --init): export rebuilds it, merges the adapters; transformers' logits == the
    LoRA model's (unmerged) logits."""
    transformers = pytest.importorskip("transformers")
    from banyan.export.hf import ExportHFConfig, export_hf
    from banyan.export.source import load_source

    cfg = lora_run(tiny_data, tmp_path / "run", max_steps=4, eval_every=0)
    trainer = Watched(cfg, PretrainTask(cfg))
    trainer.run()
    lora_model = trainer.par.raw.eval()
    assert any(k.endswith("lora_B") and v.abs().sum() > 0 for k, v in trainer.after.items())
    x = torch.randint(0, cfg.model.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = lora_model(x)
    src = load_source(tmp_path / "run")
    assert not any("lora_" in n for n in src.model.state_dict())  # plain HF names
    out = export_hf(ExportHFConfig(src=str(tmp_path / "run"), out=str(tmp_path / "hf")))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert (hf(x).logits - want).abs().max().item() <= 1e-5
        assert (src.model(x) - want).abs().max().item() <= 1e-5
