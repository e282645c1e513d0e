"""LoRA in the Trainer: adapters on the meta-built model, where a run's frozen base comes from, adapter init.

    build     build_model(meta) -> apply_lora (base frozen) -> parallelize (FSDP shards the adapters too)
              -> storage + init_plan (base draws first, then A uniform / B zeros) -> optimizer over
              the adapters only (banyan.train.optim skips requires_grad=False parameters)
    base      fresh run: the --init source's weights, or the seeded random init (torch.manual_seed(seed)
              then init_plan: the base of a plain run with the same seed). A checkpoint stores only the
              adapters and this pointer (`lora_base` in trainer.json, `lora_seed` for the seeded case),
              so a resume and an export rebuild base + adapters from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from banyan.config import RunConfig
from banyan.errors import CheckpointError
from banyan.model.lora import apply_lora, is_adapter_name


def maybe_apply_lora(model, cfg: RunConfig) -> None:
    """Adapters per cfg.lora on a (meta) model; nothing when lora.rank is 0."""
    if cfg.lora.rank:
        apply_lora(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)


def run_base(cfg: RunConfig, init_from: Path | None, resume_from: Path | None) -> Path | None:
    """The checkpoint whose weights load before training: the --init source of a fresh run; for a LoRA
    resume the base the run started from (its adapters come from `resume_from` afterwards)."""
    if resume_from is None:
        return init_from
    if not cfg.lora.rank:
        return None
    from banyan.train.checkpoint import read_trainer_state

    meta = read_trainer_state(resume_from)
    if meta.get("lora_seed") not in (None, cfg.train.seed):
        raise CheckpointError(f"checkpoint {resume_from}: its LoRA base is the random init of train.seed "
                              f"{meta['lora_seed']}, this run has train.seed {cfg.train.seed}")
    base = meta.get("lora_base")
    if base and not Path(base).is_dir():
        raise CheckpointError(f"checkpoint {resume_from}: its LoRA base {base} is gone; it is needed to resume")
    return Path(base) if base else None


def base_pointer(cfg: RunConfig, base: Path | None) -> dict[str, Any]:
    """What a LoRA checkpoint records about its frozen weights (empty without LoRA)."""
    if not cfg.lora.rank:
        return {}
    return {"lora_base": str(base.resolve()) if base else None, "lora_seed": None if base else cfg.train.seed}


def check_init_source(ck: Path) -> None:
    """--init from a LoRA checkpoint would need its base too: ask for the merged export instead."""
    from banyan.train.checkpoint import ADAPTERS

    if (ck / ADAPTERS).is_file():
        raise CheckpointError(f"--init {ck}: a LoRA checkpoint (adapters only); merge it first with "
                              f"`banyan export hf --src {ck} --out DIR` or start from its base")


def init_adapters(par) -> None:
    """The adapters' init after the base was loaded (the base load leaves them as uninitialised storage)."""
    from banyan.parallel.materialize import init_sharded

    init_sharded(par.raw, only=is_adapter_name)


def merged_lora_model(ck: Path, cfg: RunConfig):
    """A LoRA checkpoint as one plain CPU model: its base rebuilt (the `lora_base` checkpoint, itself
    merged if it is a LoRA run, or the seeded init the run started from), its adapters loaded, then
    merged into the weights (banyan.model.lora.merge_lora): plain HF parameter names."""
    import torch

    from banyan.model import build_model
    from banyan.model.lora import merge_lora
    from banyan.train import checkpoint as ckpt
    from banyan.train import dist_checkpoint as dist_ckpt

    meta = ckpt.read_trainer_state(ck)
    base = meta.get("lora_base")
    if base:
        if not Path(base).is_dir():
            raise CheckpointError(f"checkpoint {ck}: its LoRA base {base} is gone; it is needed to merge the adapters")
        from banyan.export.source import load_source

        model = load_source(base).model.train()
    else:  # the Trainer's order: manual_seed, then the plain init plan (the adapters' draws come after)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(meta.get("lora_seed", cfg.train.seed))
            model = build_model(cfg.model, device="cpu")
    maybe_apply_lora(model, cfg)
    if (ck / ckpt.ADAPTERS).is_file():
        ckpt.load_adapters(ck, model)
    else:  # sharded: read the adapter entries in this process
        with dist_ckpt.quiet_single_process():
            dist_ckpt._load_dcp(ck, model, None, {})
    return merge_lora(model)
