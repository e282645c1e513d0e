"""`banyan checkpoint consolidate`: merge a sharded (DCP) checkpoint into one model.safetensors.

    banyan checkpoint consolidate --ckpt runs/big                  # its latest checkpoint, in place
    banyan checkpoint consolidate --ckpt runs/big/checkpoints/step_000400 --out model.safetensors --dtype bf16

The model is rebuilt from the checkpoint's config.toml on the meta device (no memory, no init),
materialised empty on the CPU, and DCP reads every shard into it in one process (no torchrun, any
number of ranks wrote it). Tied weights are stored once, as in single-process checkpoints, so the
result loads with `banyan sample CKPT` and the HF export like any other checkpoint. Written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_model

from banyan import manifest

from banyan.config import ModelConfig, RunConfig, parse_cli, read_saved_config
from banyan.io import atomic_path, is_no_space
from banyan.train.checkpoint import CheckpointError, resolve_checkpoint, verify_checkpoint
from banyan.train.safe_dcp import failure_line, safe_reader
from banyan.train.dist_checkpoint import (DCP_DIR, error_summary, is_sharded, quiet_single_process,
                                         safe_load_planner)

DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ConsolidateConfig:
    """Merge a sharded (DCP) checkpoint into one model.safetensors."""

    ckpt: str = ""
    """A checkpoint folder (step_N) or a run folder (its latest checkpoint)."""
    out: str = ""
    """Output file (empty: CHECKPOINT/model.safetensors)."""
    dtype: Literal["keep", "fp32", "bf16", "fp16"] = "keep"
    """Cast the weights (keep: as saved)."""


def consolidate(path: str | Path, out: str | Path | None = None, dtype: str = "keep") -> Path:
    """Write the model weights of a sharded checkpoint as one safetensors file; returns its path."""
    ckpt = resolve_checkpoint(path)
    if not is_sharded(ckpt):
        raise CheckpointError(f"checkpoint {ckpt} is not sharded (no {DCP_DIR}/.metadata): it was written by one "
                              f"process and its model.safetensors is already the consolidated form")
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype expects one of {list(DTYPES)}, got {dtype!r}")
    target = Path(out) if out else ckpt / "model.safetensors"
    check_target(target)
    model = load_sharded_model(ckpt)
    if DTYPES[dtype] is not None:
        model = model.to(DTYPES[dtype])
    try:
        with atomic_path(target) as tmp:
            save_model(model, str(tmp))
    except OSError as e:
        if is_no_space(e):
            raise CheckpointError(f"no space left on device while writing {target}; the checkpoint {ckpt} is "
                                  f"intact (temporary file removed)") from None
        raise
    if target.parent.resolve() == ckpt.resolve():  # in place: the checkpoint's manifest lists it too
        manifest.add_files(ckpt, [target.name])
    return target


def check_target(target: Path) -> None:
    """--out must be a file name; an existing file is replaced only when it is a safetensors file."""
    if target.is_dir():
        raise CheckpointError(f"--out '{target}' is a folder; give a file name such as {target / 'model.safetensors'}")
    if target.exists():
        try:
            with safe_open(str(target), "pt") as f:
                f.keys()
        except Exception:  # noqa: BLE001 - any parse failure: not a file banyan wrote
            raise CheckpointError(f"--out '{target}' exists and is not a safetensors file; refusing to replace "
                                  f"it") from None


def empty_model(cfg: ModelConfig) -> torch.nn.Module:
    """The model `cfg` describes with uninitialised CPU weights (built on meta: no init cost), ties kept."""
    from banyan.model import build_model
    from banyan.model.common import to_empty

    model = build_model(cfg, device="meta")
    to_empty(model, torch.device("cpu"))
    return model


def load_sharded_model(ckpt: Path) -> torch.nn.Module:
    """The model of sharded checkpoint folder `ckpt` (its config.toml), every DCP shard read in this process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    verify_checkpoint(ckpt)  # every shard's size and SHA-256 against the manifest first
    cfg = read_saved_config(RunConfig, ckpt / "config.toml")
    model = empty_model(cfg.model)
    state = {"model": model.state_dict()}  # tensors that share storage with the parameters: loaded in place
    reader = safe_reader(ckpt / DCP_DIR)  # refuses a metadata file that would run code, before DCP reads it
    try:
        with quiet_single_process():
            dcp.load(state, storage_reader=reader, planner=safe_load_planner())
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP wraps the real cause (missing key, shape,
        # a damaged .distcp) in CheckpointException, a BaseException
        why = error_summary(e)
        if why.startswith("CheckpointException"):  # not a key/shape mismatch: the failing rank's own error
            why = failure_line(e)
        raise CheckpointError(f"checkpoint {ckpt} could not be loaded into the model in its config.toml: "
                              f"{why}") from None
    return model


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(ConsolidateConfig, argv, prog="banyan checkpoint consolidate")
    if not cfg.ckpt:
        raise CheckpointError("give --ckpt CHECKPOINT_OR_RUN_FOLDER (a step_N folder, or a run folder for its latest)")
    target = consolidate(cfg.ckpt, cfg.out or None, cfg.dtype)
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB)")
    return 0
