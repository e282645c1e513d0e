"""What every exporter starts from: a checkpoint resolved, its model loaded, its run facts read, and an
output written to a temp name beside the target and renamed into place.

`load_source(path)` takes a run folder (its latest checkpoint) or a checkpoint folder, single-process
(model.safetensors) or sharded (dcp/, read with banyan.train.consolidate's loader, no manual merge),
and returns the weights as a plain banyan model. A LoRA checkpoint (adapters only) gets its base
rebuilt and the adapters merged here (banyan.train.lora_run.merged_lora_model), so every format
downstream sees one plain model with HF names.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from banyan.config import RunConfig, read_saved_config
from banyan import manifest
from banyan.errors import BanyanError, CheckpointError, ConfigError
from banyan.io import is_no_space, remove_stale_temps
from banyan.train.checkpoint import CKPT_DIR, TOKENIZER_CONFIG, load_checkpoint, read_trainer_state, resolve_checkpoint


@dataclass
class Source:
    """A checkpoint ready to export."""

    ckpt: Path
    """The checkpoint folder (step_N)."""
    run_dir: Path | None
    """The run folder holding it (summary.json, metrics.jsonl), if it sits in one."""
    cfg: RunConfig
    """The run config saved with the checkpoint."""
    model: nn.Module
    """The weights as a banyan model (fp32 or as saved), eval mode, on the CPU."""
    trainer: dict[str, Any] = field(default_factory=dict)
    """trainer.json: step, tokens seen, ..."""

    @property
    def tokenizer_file(self) -> Path:
        path = self.ckpt / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"checkpoint {self.ckpt} has no tokenizer.json; an export needs the tokenizer "
                                  "(checkpoints written by `banyan pretrain` copy it from the data folder)")
        return path

    @property
    def tokenizer_config(self) -> dict[str, Any] | None:
        """The checkpoint's tokenizer_config.json (chat template, special tokens), if it has one."""
        path = self.ckpt / TOKENIZER_CONFIG
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return data

    def val_bpb(self) -> float | None:
        """Validation bits per byte at this checkpoint's step: summary.json if it is the final one, else the
        last val_bpb logged in metrics.jsonl at or before the step."""
        if self.run_dir is None:
            return None
        step = self.trainer.get("step")
        summary = self.run_dir / "summary.json"
        if summary.is_file():
            with contextlib.suppress(json.JSONDecodeError):
                data = json.loads(summary.read_text())
                if data.get("step") == step and data.get("val_bpb") is not None:
                    return float(data["val_bpb"])
        best = None
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.is_file():
            for line in metrics.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    rec = json.loads(line)
                    if rec.get("val_bpb") is not None and (step is None or rec.get("step", 0) <= step):
                        best = float(rec["val_bpb"])
        return best


def load_source(path: str | os.PathLike) -> Source:
    """Resolve `path` (run or checkpoint folder) and load its model on the CPU."""
    from banyan.train.consolidate import empty_model, load_sharded_model
    from banyan.train.dist_checkpoint import is_sharded

    ckpt = resolve_checkpoint(path)
    config_file = ckpt / "config.toml"
    if not config_file.is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no config.toml")
    cfg = read_saved_config(RunConfig, config_file)
    cfg.model.finalize()
    if cfg.lora.rank:
        from banyan.train.lora_run import merged_lora_model

        model = merged_lora_model(ckpt, cfg)
    elif (ckpt / "model.safetensors").is_file():
        model = empty_model(cfg.model)  # no random init: every weight is read from the file
        load_checkpoint(ckpt, model, None, restore_rng=False)
    elif is_sharded(ckpt):
        model = load_sharded_model(ckpt)
    else:
        raise CheckpointError(f"checkpoint {ckpt} has neither model.safetensors nor dcp/.metadata")
    trainer = read_trainer_state(ckpt)
    run_dir = ckpt.parent.parent if ckpt.parent.name == CKPT_DIR else None
    return Source(ckpt=ckpt, run_dir=run_dir, cfg=cfg, model=model.eval(), trainer=trainer)


@dataclass
class ExportConfig:
    """Where an export reads from and writes to (each format's config adds its own fields)."""

    src: str = ""
    """A run folder (its latest checkpoint is used) or a checkpoint folder (step_N), single or sharded."""
    out: str = ""
    """Output path; written to a temp name beside it, then renamed into place."""
    overwrite: bool = False
    """Replace `out` if it exists (atomically: the old one stays until the new one is complete)."""


def check_target(cfg: ExportConfig) -> Path:
    """The output path; refuses a missing --src/--out, an existing target unless --overwrite, and any target
    that would replace the source."""
    if not cfg.src:
        raise ConfigError("--src is required (a run folder or a checkpoint folder)")
    if not cfg.out:
        raise ConfigError("--out is required (the folder or file to write)")
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"output '{out}' already exists; pass --overwrite to replace it")
    target, source = out.resolve(), Path(cfg.src).resolve()
    if target == source or target in source.parents:
        raise ConfigError(f"output '{out}' contains the source '{cfg.src}'; choose another --out")
    if out.is_dir():  # --overwrite replaces a folder only when banyan wrote every file in it (its manifest)
        manifest.refuse_foreign(out, manifest.foreign_files(out), "--out", ConfigError)
    return out


@contextlib.contextmanager
def staged(out: Path, folder: bool = True) -> Iterator[Path]:
    """Yield a temp path next to `out` (a folder, or a file name); on success rename it to `out`,
    replacing an existing one in two renames; on any error remove it, leaving `out` as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent, glob.escape(f".{out.name}") + ".*")  # of killed exports (dead PIDs)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        if folder:
            tmp.mkdir()
        yield tmp
        if folder:
            manifest.write_manifest(tmp, "export")  # last: what a later --overwrite may replace
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            _remove(old)
        else:
            os.replace(tmp, out)
    except BaseException as e:
        if is_no_space(e):
            kept = f"the existing {out} is intact" if out.exists() else "nothing was written"
            raise BanyanError(f"no space left on device while writing export {out}; {kept} "
                              f"(temporary files removed)") from None
        raise
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
