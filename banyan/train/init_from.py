"""`--init SOURCE`: start a run from trained weights (fine-tuning), not from a random init.

A source is a banyan run folder (its latest complete checkpoint) or a checkpoint folder, written
by one process (safetensors) or many (DCP). The architecture is the source's: its saved model
config replaces the run's (keeping the run's dropout), so nobody retypes the shape of the model
they fine-tune. The weights load straight into the parallelized model (a zero3 rank reads only
its shards); the optimizer, step and RNG start fresh.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from banyan.config import RunConfig, read_saved_config
from banyan.errors import CheckpointError
from banyan.train import checkpoint as ckpt


def init_checkpoint(spec: str) -> Path:
    """The checkpoint folder `spec` names (a run folder resolves to its latest checkpoint)."""
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"--init {spec}: no such folder (expected a banyan run or checkpoint folder)")
    ck = ckpt.resolve_checkpoint(path)
    if not (ck / "config.toml").is_file():
        raise CheckpointError(f"--init {spec}: checkpoint {ck} has no config.toml")
    return ck


def apply_init_model(cfg: RunConfig) -> Path | None:
    """Replace cfg.model by the --init source's architecture; returns the checkpoint folder (None: no init)."""
    if not cfg.init:
        return None
    ck = init_checkpoint(cfg.init)
    saved = read_saved_config(RunConfig, ck / "config.toml").model
    cfg.model = dataclasses.replace(saved, dropout=cfg.model.dropout).finalize()
    return ck


def init_tokenizer_files(ck: Path) -> list[Path]:
    """tokenizer.json (and tokenizer_config.json with the chat template, when present) of a checkpoint."""
    return [p for p in (ck / "tokenizer.json", ck / "tokenizer_config.json") if p.is_file()]


def load_init_weights(ck: Path, par, cfg: RunConfig, env) -> None:
    """Weights of checkpoint `ck` into the (possibly sharded) model; no optimizer, no RNG."""
    from banyan.train import dist_checkpoint as dist_ckpt
    from banyan.train.lora_run import check_init_source

    check_init_source(ck)
    dist_ckpt.load(ck, par, None, cfg, env, restore_rng=False)
