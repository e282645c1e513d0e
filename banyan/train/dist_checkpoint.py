"""Checkpoints of multi-process runs: torch.distributed.checkpoint (DCP), one format for every strategy.

    OUT/checkpoints/step_000100/
        dcp/                 .metadata + one __R_0.distcp file per rank: model and optimizer state,
                             each rank writing its own shards (FSDP) or its share of the replicas (DDP)
        rng_rank{R}.pt       each rank's RNG state (tensors and lists; torch.load(weights_only=True))
        trainer.json, config.toml, tokenizer.json    as in single-process checkpoints (banyan.train.checkpoint)

Keys are plain FQNs (`model.layers.0.mlp.up_proj.weight`), the optimizer flattened per parameter
(`state.<fqn>.exp_avg`, `param_groups.<fqn>.lr`), so nothing depends on the world size or the
strategy that wrote it: DCP re-slices on load, and a run saved by zero3 on 2 ranks resumes as
zero2 on 4, ddp on 2 or one plain process. zero1 (ZeroRedundancyOptimizer) has no FQN view of
its own, so each rank writes the entries of the parameters it owns (disjoint keys).

Every rank writes into `step_N.tmp-dcp`; after a barrier rank 0 adds trainer.json and manifest.json
(banyan.manifest: sizes and SHA-256 of every rank's files, verified before a load) and renames
the folder into place (banyan.train.checkpoint.publish_checkpoint), so a crash mid-write leaves
the previous checkpoint and `latest` as they were. Multi-node runs need `out` on a shared filesystem.
`banyan checkpoint consolidate` turns `dcp/` into one model.safetensors for export and sampling.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from banyan import manifest
from banyan.config import RunConfig, read_saved_config, write_config
from banyan.io import is_no_space
from banyan.model.lora import has_lora, is_adapter_name
from banyan.parallel.env import DistEnv
from banyan.train import checkpoint as ckpt
from banyan.train import faults
from banyan.train.checkpoint import CheckpointError
from banyan.train.safe_dcp import safe_reader

DCP_DIR = "dcp"
_WRAPPER_PARTS = ("_checkpoint_wrapped_module", "_orig_mod")


def safe_load_planner():
    """A DCP load planner that reads non-tensor values (param-group floats, tuples), which DCP stores as
    torch.save bytes, with weights_only=True instead of the default planner's full unpickling.
    (Built on first use: importing torch.distributed.checkpoint costs a second or two.)"""
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._nested_dict import set_element

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafeLoadPlanner()


@contextlib.contextmanager
def quiet_single_process():
    """DCP warns each time it loads without a process group; on one process that is the intended use."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _dcp():
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import state_dict as sd

    return dcp, sd


def is_sharded(path: str | Path) -> bool:
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def clean_fqn(name: str) -> str:
    """Drop the name parts wrappers add (activation checkpointing, torch.compile), as DCP's FQNs do."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def _fqn_of(raw: nn.Module) -> dict[nn.Parameter, str]:
    return {p: clean_fqn(n) for n, p in raw.named_parameters()}


def _is_zero(optimizer) -> bool:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return isinstance(optimizer, ZeroRedundancyOptimizer)


# ----------------------------------------------------------------------------- optimizer views
def _ensure_state(opt: torch.optim.Optimizer) -> None:
    """Create the optimizer's state tensors (a step with zero grads at lr 0) so they can be loaded into."""
    if opt.state or not any(g["params"] for g in opt.param_groups):
        return
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    saved = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] = 0.0
    opt.step()
    for g, lr in zip(opt.param_groups, saved):
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)


def _zero_flat(zero, fqn_of: dict) -> dict[str, Any]:
    """This rank's part of a ZeroRedundancyOptimizer in the flattened FQN format (owned params only)."""
    inner = zero.optim
    _ensure_state(inner)
    for outer, g in zip(zero.param_groups, inner.param_groups):  # see _optim_template on initial_lr
        g["initial_lr"] = outer.setdefault("initial_lr", outer["lr"])
    flat: dict[str, Any] = {}
    for g in inner.param_groups:
        for p in g["params"]:
            fqn = fqn_of[p]
            for k, v in inner.state[p].items():
                flat[f"state.{fqn}.{k}"] = v
            for k, v in g.items():
                if k != "params":
                    flat[f"param_groups.{fqn}.{k}"] = v
    return flat


def _zero_apply(zero, fqn_of: dict, flat: dict[str, Any]) -> None:
    """Copy loaded flattened entries into the ZeRO inner optimizer (state) and its param groups."""
    inner = zero.optim
    _ensure_state(inner)
    for gi, g in enumerate(inner.param_groups):
        for p in g["params"]:
            fqn = fqn_of[p]
            for k, v in list(inner.state[p].items()):
                key = f"state.{fqn}.{k}"
                if key not in flat:
                    raise CheckpointError(f"checkpoint has no optimizer entry '{key}' (saved by another optimizer?)")
                src = flat[key]
                if torch.is_tensor(v) and torch.is_tensor(src):
                    v.copy_(src.to(v.device, v.dtype))
                else:
                    inner.state[p][k] = src
        if g["params"]:
            fqn = fqn_of[g["params"][0]]
            for k in list(g):
                key = f"param_groups.{fqn}.{k}"
                if k != "params" and key in flat:
                    g[k] = zero.param_groups[gi][k] = flat[key]


def _parts(optimizer) -> torch.optim.Optimizer | tuple[torch.optim.Optimizer, ...]:
    """A composite optimizer (Muon for matrices + AdamW for the rest) is handed to DCP as its parts:
    each part has a standard state_dict, and the flattened keys name parameters, not optimizers."""
    inner = tuple(v for v in vars(optimizer).values() if isinstance(v, torch.optim.Optimizer))
    return inner or optimizer


def _optim_template(raw: nn.Module, optimizer, fqn_of: dict) -> dict[str, Any]:
    """The flattened optimizer state dict of this rank (live tensors, so DCP loads in place)."""
    if _is_zero(optimizer):
        return _zero_flat(optimizer, fqn_of)
    # the schedule scales `initial_lr`; make sure it is a key here, so a resume restores it rather
    # than taking the decayed lr of the checkpoint as the new peak
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    _, sd = _dcp()
    return sd.get_optimizer_state_dict(raw, _parts(optimizer),
                                       options=sd.StateDictOptions(flatten_optimizer_state_dict=True))


def _apply_optim(raw: nn.Module, optimizer, fqn_of: dict, flat: dict[str, Any], full: bool) -> None:
    if _is_zero(optimizer):
        _zero_apply(optimizer, fqn_of, flat)
        return
    _, sd = _dcp()
    sd.set_optimizer_state_dict(raw, _parts(optimizer), flat,
                                options=sd.StateDictOptions(flatten_optimizer_state_dict=True, full_state_dict=full))


# ----------------------------------------------------------------------------- save
def save(run_dir: str | Path, step: int, par, optimizer, trainer_state: dict[str, Any], cfg: RunConfig,
         tokenizer_file: Path | None, keep_last: int, env: DistEnv) -> Path | None:
    """Write checkpoint `step` (collective under torchrun: every rank must call it)."""
    if not env.distributed:
        return ckpt.save_checkpoint(run_dir, step, par.raw, optimizer, trainer_state, cfg, tokenizer_file, keep_last)
    root = ckpt.checkpoint_root(run_dir)
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp-dcp"  # same name on every rank (a PID would differ)
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    env.barrier()
    try:
        path = _write_sharded(tmp, final, run_dir, step, par, optimizer, trainer_state, cfg, tokenizer_file,
                              keep_last, env)
    except BaseException as e:
        if env.is_main:  # no collective here: a failure after the barrier is rank 0's alone
            shutil.rmtree(tmp, ignore_errors=True)
        if is_no_space(e):  # DCP hands every rank the failures of all of them
            raise ckpt.no_space_error(final, run_dir) from None
        raise
    env.barrier()
    return path if env.is_main else final


def _write_sharded(tmp: Path, final: Path, run_dir, step: int, par, optimizer, trainer_state: dict[str, Any],
                   cfg: RunConfig, tokenizer_file: Path | None, keep_last: int, env: DistEnv) -> Path | None:
    dcp, sd = _dcp()
    fqn_of = _fqn_of(par.raw)
    state = {"model": model_state(par.raw, None), "optim": _optim_template(par.raw, optimizer, fqn_of)}
    dcp.save(state, checkpoint_id=str(tmp / DCP_DIR))
    torch.save(ckpt.rng_state(), tmp / f"rng_rank{env.rank}.pt")
    faults.maybe_kill_mid_save(step, env.rank, Path(run_dir))
    env.barrier()
    if not env.is_main:
        return None
    write_config(cfg, tmp / "config.toml", extra={"world_size": env.world_size, "strategy": par.strategy})
    ckpt.copy_tokenizer(tokenizer_file, tmp)
    meta = {"step": step, **trainer_state, "format": "dcp", "world_size": env.world_size,
            "strategy": par.strategy}
    (tmp / "trainer.json").write_text(json.dumps(meta, indent=1))
    manifest.write_manifest(tmp, "checkpoint")  # last: every rank's shards are on disk (barrier above)
    return ckpt.publish_checkpoint(tmp, final, run_dir, keep_last)


# ----------------------------------------------------------------------------- load
def load(path: str | Path, par, optimizer, cfg: RunConfig | None, env: DistEnv,
         restore_rng: bool = True) -> dict[str, Any]:
    """Load any banyan checkpoint into a (possibly parallelized) model + optimizer; returns trainer state.

    sharded (DCP) -> any world size and strategy; single-process (safetensors) -> any strategy too,
    every rank reading the full files and keeping its part.
    """
    path = Path(path)
    if not (path / "trainer.json").is_file():
        raise CheckpointError(f"'{path}' is not a complete checkpoint (no trainer.json)")
    if not is_sharded(path) and not env.distributed:
        return ckpt.load_checkpoint(path, par.raw, optimizer, cfg, restore_rng)
    ckpt.verify_checkpoint(path)  # sizes and SHA-256 of every shard before DCP reads any
    saved = read_saved_config(RunConfig, path / "config.toml")
    if cfg is not None:
        ckpt.check_compatible(saved.model.finalize(), cfg.model, path)
        if optimizer is not None:
            ckpt.check_same_lora(saved, cfg, path)
    fqn_of = _fqn_of(par.raw)
    if is_sharded(path):
        _load_dcp(path, par.raw, optimizer, fqn_of)
        rng_file = path / f"rng_rank{env.rank}.pt"
        rng_file = rng_file if rng_file.is_file() else path / "rng_rank0.pt"
    else:
        _load_full(path, par.raw, optimizer, fqn_of)
        rng_file = path / "rng.pt"
    if restore_rng and rng_file.is_file():
        ckpt.set_rng_state(torch.load(rng_file, weights_only=True))
    return ckpt.read_trainer_state(path)


def model_state(raw: nn.Module, path: Path | None) -> dict[str, Any]:
    """The model entries a checkpoint holds: all of them, but for LoRA only the adapters (a LoRA checkpoint,
    or saving one: path None) or only the base (a plain checkpoint loaded under a LoRA model's adapters)."""
    _, sd = _dcp()
    state = sd.get_model_state_dict(raw)
    if not has_lora(raw):
        return state
    adapters = path is None or (path / ckpt.ADAPTERS).is_file() or "lora_base" in _trainer_meta(path)
    return {k: v for k, v in state.items() if is_adapter_name(k) == adapters}


def _trainer_meta(path: Path) -> dict[str, Any]:
    meta = path / "trainer.json"  # an HF folder (--init hf:DIR) has none: plain base weights
    return ckpt.read_trainer_state(path) if meta.is_file() else {}


def _load_dcp(path: Path, raw: nn.Module, optimizer, fqn_of: dict) -> None:
    from torch.distributed.checkpoint.api import CheckpointException

    dcp, sd = _dcp()
    state: dict[str, Any] = {"model": model_state(raw, path)}
    if optimizer is not None:
        state["optim"] = _optim_template(raw, optimizer, fqn_of)
    reader = safe_reader(path / DCP_DIR)  # refuses a metadata file that would run code, before DCP reads it
    try:
        with quiet_single_process():
            dcp.load(state, storage_reader=reader, planner=safe_load_planner())
    except (Exception, CheckpointException) as e:  # DCP wraps per-rank failures (missing keys, shape
        # mismatch, a corrupt shard) in CheckpointException, a BaseException
        raise CheckpointError(f"checkpoint {path} cannot be loaded into this model/optimizer: "
                              f"{error_summary(e)}") from None
    sd.set_model_state_dict(raw, state["model"], options=sd.StateDictOptions(strict=not has_lora(raw)))
    if optimizer is not None:
        _apply_optim(raw, optimizer, fqn_of, state["optim"], full=False)


def load_full_weights(raw: nn.Module, weights: dict[str, torch.Tensor], where: str,
                      path: Path | None = None) -> None:
    """Full (unsharded) tensors by FQN into a plain, DDP or FSDP-sharded model: each rank keeps its part.

    `path` (the checkpoint they came from) tells a LoRA model whether they are its adapters or its base."""
    # safetensors stores tied tensors once; give every name of a shared parameter the stored value
    names: dict[int, list[str]] = {}
    for n, p in raw.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(clean_fqn(n))
    for group in names.values():
        have = [n for n in group if n in weights]
        for n in group:
            if have and n not in weights:
                weights[n] = weights[have[0]]
    if has_lora(raw):  # adapters of a LoRA checkpoint, or the base under this run's adapters: only those
        want = set(model_state(raw, path))
        missing = sorted(want - set(weights))
        if missing:
            raise CheckpointError(f"{where} does not match the model: missing {missing[:5]}")
        weights = {k: v for k, v in weights.items() if k in want}
    _, sd = _dcp()
    try:
        sd.set_model_state_dict(raw, weights, options=sd.StateDictOptions(full_state_dict=True,
                                                                          strict=not has_lora(raw)))
    except RuntimeError as e:
        raise CheckpointError(f"{where} does not match the model: {error_summary(e)}") from None


def _load_full(path: Path, raw: nn.Module, optimizer, fqn_of: dict) -> None:
    """A single-process checkpoint into a distributed run: full tensors on every rank, each keeps its part."""
    from safetensors.torch import load_file

    weights = load_file(str(path / (ckpt.ADAPTERS if (path / ckpt.ADAPTERS).is_file() else "model.safetensors")))
    load_full_weights(raw, weights, f"checkpoint {path}", path)
    if optimizer is None:
        return
    osd = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    named = {} if _is_zero(optimizer) else {k: v for k, v in vars(optimizer).items()
                                             if isinstance(v, torch.optim.Optimizer)}
    pairs = [(named[k], osd.get(k)) for k in named] if named else [(optimizer, osd)]
    flat: dict[str, Any] = {}
    for part, part_sd in pairs:
        flat.update(_flat_from_indexed(part, part_sd, fqn_of, path))
    _apply_optim(raw, optimizer, fqn_of, _shard_like_params(flat, fqn_of), full=False)


def _shard_like_params(flat: dict[str, Any], fqn_of: dict) -> dict[str, Any]:
    """Full optimizer tensors -> the DTensor sharding of their parameter (FSDP), cut locally from the full
    copy every rank holds (src_data_rank=None: no communication). Plain parameters keep full tensors."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    param_of = {fqn: p for p, fqn in fqn_of.items()}
    out = {}
    for key, v in flat.items():
        fqn, _, _name = key[len("state."):].rpartition(".") if key.startswith("state.") else ("", "", "")
        p = param_of.get(fqn)
        if isinstance(p, DTensor) and torch.is_tensor(v) and tuple(v.shape) == tuple(p.shape):
            v = distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
        out[key] = v
    return out


def _flat_from_indexed(opt, sd: dict | None, fqn_of: dict, path: Path) -> dict[str, Any]:
    """optimizer.state_dict() numbers parameters in param-group order; this run's optimizer has the same
    groups, so index i is the i-th parameter here too. Returns the flattened FQN form."""
    live_groups = opt.param_groups
    if not isinstance(sd, dict) or "param_groups" not in sd:
        raise CheckpointError(f"checkpoint {path}: optimizer.pt does not hold a {type(opt).__name__} state "
                              f"(written with another optim.name?)")
    if len(live_groups) != len(sd["param_groups"]):
        raise CheckpointError(f"checkpoint {path}: optimizer has {len(sd['param_groups'])} param groups, "
                              f"this run {len(live_groups)} (another optim.name?)")
    flat: dict[str, Any] = {}
    for live, saved in zip(live_groups, sd["param_groups"]):
        if len(live["params"]) != len(saved["params"]):
            raise CheckpointError(f"checkpoint {path}: param group sizes differ ({len(saved['params'])} vs "
                                  f"{len(live['params'])})")
        for p, idx in zip(live["params"], saved["params"]):
            fqn = fqn_of[p]
            for k, v in sd["state"].get(idx, {}).items():
                flat[f"state.{fqn}.{k}"] = v
            for k, v in saved.items():
                if k != "params":
                    flat[f"param_groups.{fqn}.{k}"] = v
    return flat


def error_summary(e: BaseException) -> str:
    """The line of a DCP failure that says what went wrong (else the failing rank's own error)."""
    from banyan.train.safe_dcp import failure_line

    text = str(e).strip().splitlines()
    for line in text:
        if "Missing key" in line or "size mismatch" in line or "Size mismatch" in line:
            return line.strip()
    return failure_line(e)
