"""Trainer checks that run inside the spawned 2-rank worker (dist_helpers.worker):

token_weighted  masked micro-batches whose trained-token counts differ per micro-step and per rank give
                the gradients of one process on the concatenated batch (<= 1e-6 relative), for ddp, zero2
                and zero3 with 2 accumulation micro-steps; the usual mean-of-means would not
meta_zero3      a zero3 set-up built on the meta device never allocates a full parameter on a rank (every
                tensor created during set-up is counted), keeps only shards, and its weights are
                bit-identical to a one-process build_model with the same seed
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

V, B, T, N_MICRO = 61, 2, 16, 2
# trained positions kept per (rank, micro-step, row): uneven on purpose, one row fully masked
KEEP = {(0, 0): (3, 16), (0, 1): (0, 9), (1, 0): (16, 16), (1, 1): (1, 5)}


def _cfg(strategy: str):
    from banyan.config import RunConfig, load_config

    return load_config(RunConfig, overrides={
        "model": {"arch": "llama", "n_layer": 2, "n_head": 2, "n_kv_head": 1, "d_model": 32, "max_seq_len": 64,
                  "vocab_size": V, "tie_embeddings": False},
        "train": {"device": "cpu", "seq_len": T, "micro_batch": B}, "parallel": {"strategy": strategy},
        "optim": {"name": "adamw"}}).finalize()


def _batches(world: int) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    out = {}
    for r in range(world):
        for m in range(N_MICRO):
            x = torch.randint(0, V, (B, T + 1), generator=g)
            labels = x[:, 1:].clone()
            for row, keep in enumerate(KEEP[(r, m)]):
                labels[row, keep:] = -100
            out[r, m] = {"input_ids": x[:, :-1], "labels": labels}
    return out


def _full_grads(model) -> dict[str, torch.Tensor]:
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad
        grads[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
    return grads


def _reference_grads(batches, world: int, mean_of_means: bool = False) -> dict[str, torch.Tensor]:
    from banyan.model import build_model
    from banyan.train.lm import causal_lm_loss

    torch.manual_seed(0)
    model = build_model(_cfg("single").model)
    total = sum(int((b["labels"] != -100).sum()) for b in batches.values())
    for (r, m), b in batches.items():
        loss_sum, count, _ = causal_lm_loss(model, b)
        (loss_sum / (count * N_MICRO * world) if mean_of_means else loss_sum / total).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def _rel(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).norm() / b[k].norm()) for k in b)


def token_weighted(rank: int, world: int) -> None:
    from banyan.parallel.env import DistEnv
    from banyan.train.lm import causal_lm_loss
    from banyan.train.step import backward_step
    from banyan.train.task import labelled_count
    from banyan.train.trainer import build_parallel

    batches = _batches(world)
    want = _reference_grads(batches, world)
    naive = _reference_grads(batches, world, mean_of_means=True)
    assert _rel(naive, want) > 1e-2, "the uneven masks must make mean-of-means differ"
    for strategy in ("ddp", "zero2", "zero3"):
        torch.manual_seed(0)
        par, _ = build_parallel(_cfg(strategy), DistEnv.from_env("cpu"))
        mine = [batches[rank, m] for m in range(N_MICRO)]
        _, n, _ = backward_step(par.model, mine, causal_lm_loss, labelled_count, None, par.no_sync)
        assert int(n) == sum(int((b["labels"] != -100).sum()) for b in batches.values())
        err = _rel(_full_grads(par.raw), want)
        assert err <= 1e-6, f"{strategy}: gradient differs from one process by {err:.2e} (relative)"


class AllocationMeter(TorchDispatchMode):
    """The largest tensor (bytes) any op creates with real storage while the mode is on."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            t = getattr(t, "_local_tensor", t)  # a DTensor: what this rank allocates is its local shard
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def meta_zero3(rank: int, world: int) -> None:
    from banyan.model import build_model
    from banyan.parallel import materialize
    from banyan.parallel.env import DistEnv
    from banyan.train.trainer import build_parallel

    cfg = _cfg("zero3")
    old = materialize.INIT_CHUNK
    materialize.INIT_CHUNK = 64  # pieces far smaller than any weight matrix, so a full one would show
    try:
        torch.manual_seed(0)
        with AllocationMeter() as meter:
            par, _ = build_parallel(cfg, DistEnv.from_env("cpu"))
    finally:
        materialize.INIT_CHUNK = old
    rows = {name: -(-p.shape[0] // world) for name, p in par.raw.named_parameters()}  # FSDP2: ceil(rows / world)
    shard_bytes = {name: rows[name] * (p.numel() // p.shape[0]) * 4 for name, p in par.raw.named_parameters()}
    full_bytes = max(p.numel() * 4 for p in par.raw.parameters())
    # nothing created during set-up is bigger than one rank's shard of the biggest parameter (half of it here)
    assert meter.largest <= max(shard_bytes.values()) < full_bytes, (meter.largest, shard_bytes, full_bytes)
    for name, p in par.raw.named_parameters():
        local = p.to_local()
        assert local.shape[0] <= rows[name] and local.untyped_storage().nbytes() <= shard_bytes[name], name
    torch.manual_seed(0)
    ref = build_model(cfg.model)
    for (name, p), want in zip(par.raw.named_parameters(), ref.parameters()):
        assert torch.equal(p.full_tensor(), want), f"{name}: sharded init differs from one-process init"
