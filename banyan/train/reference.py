"""The frozen reference model of preference training, and its log-probs cached on disk.

    sequence_logps(model, batch, chunk)   -> per-row sum of log p(label) over labelled positions [R]
                                              and the labelled counts [R] (sum-reduction CE, chunked
                                              through banyan.losses.lm_loss when train.chunked_loss)
    build_reference(cfg, env, ck)         the --init weights built like the policy (meta device ->
                                              parallelize -> load) but with no optimizer, in eval
                                              mode, requires_grad off
    weights_fingerprint(model)            sha256 over every tensor's name, dtype, shape and bytes
    RefCache                              the reference's log-probs of every pair, in one
                                              safetensors file named by sha256(template, encoded
                                              pairs, seq_len, dtype, weights fingerprint): a
                                              different model, template or data gives another
                                              name, so a cache never scores against the wrong model
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn

from banyan.train.task import IGNORE, Batch


def sequence_logps(model: nn.Module, batch: Batch, chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob sums [R] fp32, labelled counts [R]) of input_ids/labels [R, T]."""
    from banyan.losses import cross_entropy, lm_loss

    x, y = batch["input_ids"], batch["labels"]
    if chunk:
        hidden = model(x, return_hidden=True)  # through forward so DDP/FSDP hooks run
        core = getattr(model, "module", model)
        per_pos = lm_loss(hidden, core.output_weight(), y, chunk=chunk, ignore_index=IGNORE, reduction="none")
    else:
        per_pos = cross_entropy(model(x), y, ignore_index=IGNORE, reduction="none")  # [R, T], 0 where ignored
    return -per_pos.sum(-1), (y != IGNORE).sum(-1)


def build_reference(cfg, env, ck: Path) -> nn.Module:
    """The frozen reference: the checkpoint `ck` in a model parallelized like the policy, without an optimizer."""
    from banyan.model import build_model
    from banyan.parallel.wrap import parallelize
    from banyan.train.init_from import load_init_weights

    ref_cfg = copy.deepcopy(cfg)
    ref_cfg.train.activation_checkpointing = "none"  # no backward through it
    ref_cfg.model.dropout = 0.0
    par = parallelize(build_model(ref_cfg.model, device="meta"), ref_cfg, env, init=False)
    load_init_weights(ck, par, ref_cfg, env)
    # DDP would sync gradients that never exist: the raw model is the whole model on each rank
    model = par.raw if par.full_model_on_each_rank else par.model
    model.eval().requires_grad_(False)
    return model


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of the full weights (sharded tensors are gathered: collective under FSDP)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_fingerprint(template: str, splits: dict, seq_len: int, dtype: str) -> str:
    """sha256 of the chat template, the encoded pairs of every split, seq_len and the compute dtype."""
    h = hashlib.sha256(json.dumps({"template": template, "seq_len": seq_len, "dtype": dtype}).encode())
    for name in sorted(splits):
        h.update(name.encode())
        h.update(json.dumps(splits[name].rows, separators=(",", ":")).encode())
    return h.hexdigest()


@torch.no_grad()
def score_pairs(model: nn.Module, data, batch: int, chunk: int, autocast, device) -> torch.Tensor:
    """[N, 2] fp32 reference log-probs (chosen, rejected) of every pair of `data` (a PairData)."""
    out = torch.empty(len(data), 2, dtype=torch.float32)
    for lo in range(0, len(data), batch):
        idx = list(range(lo, min(lo + batch, len(data))))
        b = {k: v.to(device) for k, v in data.collate(idx).items()}
        with autocast:
            logps, _ = sequence_logps(model, b, chunk)
        out[lo:lo + len(idx)] = logps.float().cpu().view(2, -1).T
    return out


class RefCache:
    """Reference log-probs per split ({split: [N, 2]}), stored in `folder/ref_logps-KEY.safetensors`."""

    def __init__(self, folder: Path, key: str):
        self.path = Path(folder) / f"ref_logps-{key[:32]}.safetensors"
        self.key = key

    def load(self) -> dict[str, torch.Tensor] | None:
        """The cached tensors, or None when there is no cache for this key (safetensors: nothing unpickled)."""
        from safetensors import safe_open

        if not self.path.is_file():
            return None
        with safe_open(str(self.path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != self.key:
                return None
            return {name: f.get_tensor(name) for name in f.keys()}

    def save(self, tensors: dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save_file

        from banyan.io import atomic_path

        with atomic_path(self.path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"key": self.key})
        return self.path
