"""Checkpoints: safetensors weights + optimizer, RNG and trainer state, written atomically.

Layout of one checkpoint (everything a resume or an export needs, nothing pickled):

    OUT/checkpoints/step_000100/
        model.safetensors   weights (tied tensors stored once)
        adapters.safetensors  instead of model.safetensors in a LoRA run: the adapters only; the frozen
                            base is trainer.json's `lora_base` (a checkpoint) or the seeded init
        optimizer.pt        optimizer.state_dict(), tensors only -> torch.load(weights_only=True)
        rng.pt              torch / cuda / numpy / python RNG states as tensors and lists
        trainer.json        step, tokens seen, data position, bad-step counter, ...
        config.toml         the resolved run config (+ git commit)
        tokenizer.json      copied from the data folder, so `banyan sample` needs only this folder
        tokenizer_config.json  copied too when the data folder has one (chat template, special tokens)
        manifest.json       sizes and SHA-256 of all the above (banyan.manifest), written last;
                            a load verifies it first, so a torn or altered file is never loaded
    OUT/checkpoints/latest  name of the newest complete checkpoint, updated last

A checkpoint is first written to `step_000100.tmp-PID` and renamed into place, so a crash
mid-write leaves the previous checkpoint (and `latest`) untouched. Older ones beyond
`keep_last` are deleted only after the new one is complete. A write that fails (a full disk)
removes its temp folder and says which checkpoint is still intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, load_model, save_file, save_model

from banyan.errors import CheckpointError, ConfigError
from banyan.config import ModelConfig, RunConfig, read_saved_config, to_dict, write_config
from banyan import manifest
from banyan.io import atomic_write_text, is_no_space, replace_dir
from banyan.train import faults
from banyan.model.lora import has_lora, is_adapter_name, lora_state_dict

CKPT_DIR = "checkpoints"
ADAPTERS = "adapters.safetensors"
TOKENIZER_CONFIG = "tokenizer_config.json"  # HF convention: chat_template, bos/eos/pad tokens


# ----------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


# ----------------------------------------------------------------------------- save / find / load
def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CKPT_DIR


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (renamed into place), oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if p.is_dir() and ".tmp" not in p.name and (p / "trainer.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint named by `latest`, else the newest complete one, else None."""
    root = checkpoint_root(run_dir)
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "trainer.json").is_file():
            return cand
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder (-> its latest checkpoint)."""
    p = Path(path)
    if (p / "trainer.json").is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise CheckpointError(f"no complete checkpoint in '{p}' (expected {p}/checkpoints/step_*/ or a checkpoint folder)")
    return latest


def save_checkpoint(run_dir: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    trainer_state: dict[str, Any], cfg: RunConfig, tokenizer_file: Path | None = None,
                    keep_last: int = 2) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, prune old ones; returns its path."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        if has_lora(model):  # the frozen base is not written again: adapters + a pointer (trainer_state)
            save_file({k: v.contiguous() for k, v in lora_state_dict(model).items()}, str(tmp / ADAPTERS))
        else:
            save_model(model, str(tmp / "model.safetensors"))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        faults.maybe_kill_mid_save(step, 0, Path(run_dir))  # BANYAN_FAULT=killsave@N: die half-written
        write_config(cfg, tmp / "config.toml")
        copy_tokenizer(tokenizer_file, tmp)
        (tmp / "trainer.json").write_text(json.dumps({"step": step, **trainer_state}, indent=1))
        manifest.write_manifest(tmp, "checkpoint")  # last: lists (and hashes) everything above
        return publish_checkpoint(tmp, final, run_dir, keep_last)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_no_space(e):
            raise no_space_error(final, run_dir) from None
        raise


def no_space_error(final: Path, run_dir: str | Path) -> CheckpointError:
    """One line for a disk that filled up while checkpoint `final` was written, naming the intact one."""
    prev = latest_checkpoint(run_dir)
    intact = f"{prev.name} is intact" if prev is not None and prev != final else "no earlier checkpoint exists"
    return CheckpointError(f"no space left on device while writing checkpoint {final.name}; {intact} "
                           f"(free space in {checkpoint_root(run_dir)} and --resume)")


def copy_tokenizer(tokenizer_file: Path | None, dest: Path) -> None:
    """Copy tokenizer.json into `dest`, and the tokenizer_config.json beside it (chat template, special
    tokens) when there is one, so exports and chat tools find both in the checkpoint."""
    if tokenizer_file is None or not Path(tokenizer_file).is_file():
        return
    shutil.copy2(tokenizer_file, dest / "tokenizer.json")
    sibling = Path(tokenizer_file).with_name(TOKENIZER_CONFIG)
    if sibling.is_file():
        shutil.copy2(sibling, dest / TOKENIZER_CONFIG)


def publish_checkpoint(tmp: Path, final: Path, run_dir: str | Path, keep_last: int) -> Path:
    """Rename a fully written `tmp` folder to `final`, point `latest` at it, prune old ones (also used
    by banyan.train.dist_checkpoint for sharded checkpoints)."""
    root = checkpoint_root(run_dir)
    if final.is_dir():  # a checkpoint of this step again (SIGTERM after a save, a resume past a torn one)
        _refuse_foreign_files(final)
    replace_dir(tmp, final)  # re-saving the same step (e.g. SIGTERM right after a periodic save) replaces it
    atomic_write_text(root / "latest", final.name)
    for stale in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _refuse_foreign_files(final: Path) -> None:
    """Replace a checkpoint folder only when every file in it is one its manifest lists (one banyan wrote)."""
    try:
        doc = manifest.read_manifest(final)
    except manifest.IntegrityError:  # a torn manifest: a damaged checkpoint of ours, being written anew
        return
    if doc is not None:
        manifest.refuse_foreign(final, manifest.foreign_files(final), "checkpoint")


def check_compatible(saved: ModelConfig, current: ModelConfig, where: Path) -> None:
    """Every architecture field must match; names the first one that differs."""
    a, b = to_dict(saved), to_dict(current)
    for key in a:
        if key in ("dropout",):
            continue
        if a[key] != b.get(key):
            raise CheckpointError(f"checkpoint {where} is incompatible: model.{key} is {a[key]!r} there, "
                                  f"{b.get(key)!r} in this run")


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    cfg: RunConfig | None = None, restore_rng: bool = True) -> dict[str, Any]:
    """Load weights (+ optimizer, RNG) from checkpoint `path` into live objects; returns trainer state."""
    path = Path(path)
    verify_checkpoint(path)
    saved_cfg = read_saved_config(RunConfig, path / "config.toml")
    if cfg is not None:
        check_compatible(saved_cfg.model.finalize(), cfg.model, path)
        if optimizer is not None:
            check_same_lora(saved_cfg, cfg, path)
    if (path / ADAPTERS).is_file():
        load_adapters(path, model)
    elif not (path / "model.safetensors").is_file() and (path / "dcp").is_dir():
        raise CheckpointError(f"checkpoint {path} is sharded (written by a multi-process run); resume it with "
                              f"`banyan pretrain --resume` or merge it first: banyan checkpoint consolidate {path}")
    else:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
        missing = [k for k in missing if not is_adapter_name(k)]  # a plain checkpoint is a LoRA run's base
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {path} does not match the model: missing {sorted(missing)[:5]}, "
                                  f"unexpected {sorted(unexpected)[:5]}")
    if optimizer is not None:
        opt_file = path / "optimizer.pt"
        if not opt_file.is_file():
            raise CheckpointError(f"checkpoint {path} has no optimizer.pt; cannot resume training from it")
        optimizer.load_state_dict(torch.load(opt_file, map_location="cpu", weights_only=True))
    if restore_rng:
        set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return read_trainer_state(path)


def verify_checkpoint(path: Path) -> None:
    """Every file of checkpoint `path` has the size and SHA-256 its manifest.json lists (IntegrityError
    naming the first that differs); a checkpoint from before manifests loads with a warning."""
    manifest.verify(path, what="checkpoint")


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's trainer.json (step, tokens, data position, task and LoRA state); one clear error if torn."""
    f = Path(path) / "trainer.json"
    try:
        state = json.loads(f.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"'{path}' is not a complete checkpoint (no trainer.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: invalid JSON: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{f}: expected a JSON object, got {type(state).__name__}")
    return state


def check_same_lora(saved: RunConfig, cfg: RunConfig, where: Path) -> None:
    """A resume keeps the adapter layout (rank, alpha, targets) of the run it continues."""
    a, b = to_dict(saved.lora), to_dict(cfg.lora)
    for key in ("rank", "alpha", "targets"):
        if a.get(key) != b.get(key):
            raise CheckpointError(f"checkpoint {where} is incompatible: lora.{key} is {a.get(key)!r} there, "
                                  f"{b.get(key)!r} in this run")


def load_adapters(path: Path, model: nn.Module) -> None:
    """adapters.safetensors into a LoRA model: every adapter must be there, nothing else."""
    if not has_lora(model):
        raise CheckpointError(f"checkpoint {path} holds LoRA adapters only; load it into a model with the same "
                              f"--lora settings, or export it (banyan export hf merges them)")
    weights = load_file(str(path / ADAPTERS))
    want = lora_state_dict(model)
    missing, unexpected = sorted(set(want) - set(weights)), sorted(set(weights) - set(want))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path}: adapters do not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, param in want.items():
            if tuple(weights[name].shape) != tuple(param.shape):
                raise CheckpointError(f"checkpoint {path}: adapter {name} has shape {tuple(weights[name].shape)}, "
                                      f"the model {tuple(param.shape)}")
            param.copy_(weights[name])
