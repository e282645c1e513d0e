"""`parallelize()`: everything that wraps the model from outside, in one place.

The model files know nothing of this. Order matters (torchtitan's): activation checkpointing
per block, then torch.compile, then the data-parallel wrapper. Strategies:

    single  one process, the model as built
    ddp     DistributedDataParallel: full replica per rank, gradients all-reduced in buckets
            (skipped on accumulation micro-steps through `no_sync`)
    zero1   ddp + optimizer state sharded across ranks (ZeroRedundancyOptimizer, ZeRO stage 1)
    zero2   FSDP2 `fully_shard` per block and at the root, parameters kept gathered from forward
            to backward (reshard_after_forward=False): grads and optimizer state sharded
    zero3   FSDP2 resharding after forward too: parameters, grads and optimizer state sharded
    hsdp    FSDP2 on a 2-D mesh (replicate x shard): shard within a node, replicate across nodes,
            so only a gradient all-reduce crosses the slow network
    auto    picked by banyan.parallel.auto from model size, free memory and node count

Rajbhandari et al. 2020 (ZeRO) for the stages; FSDP2 keeps each parameter as a DTensor sharded
on dim 0, so the optimizer sees only its rank's shard.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from banyan.config import ConfigError, RunConfig
from banyan.parallel.env import DistEnv

STRATEGIES = ("single", "ddp", "zero1", "zero2", "zero3", "hsdp")
FSDP_STRATEGIES = ("zero2", "zero3", "hsdp")


@dataclass
class Parallelized:
    model: nn.Module                      # what the train step calls
    raw: nn.Module                        # the unwrapped model (FSDP2 shards it in place; names are HF's)
    strategy: str = "single"
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None
    notes: list[str] = field(default_factory=list)
    mesh: object | None = None            # the FSDP DeviceMesh (None for single/ddp/zero1)

    @property
    def sharded(self) -> bool:
        """Parameters are DTensor shards (FSDP strategies): `raw` cannot be used alone on one rank."""
        return self.strategy in FSDP_STRATEGIES

    @property
    def full_model_on_each_rank(self) -> bool:
        return not self.sharded

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over ranks (SUM / world: ReduceOp.AVG exists only on NCCL, not gloo)."""
        if dist.is_initialized() and dist.get_world_size() > 1:
            t = t.detach().clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t = t / dist.get_world_size()
        return t

    def shard_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """zero1: rebuild `optimizer` as a ZeroRedundancyOptimizer over the same param groups; others: as is."""
        if self.strategy != "zero1":
            return optimizer
        return zero_redundancy(optimizer)


def zero_redundancy(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Wrap a single-class torch optimizer so each rank keeps state for ~1/world of the parameters.

    ZeroRedundancyOptimizer takes the optimizer *class* and its keyword defaults, then builds one
    inner optimizer per rank over that rank's partition; the param groups (with their own lr and
    weight decay) carry over unchanged.
    """
    from torch.distributed.optim import ZeroRedundancyOptimizer

    cls = type(optimizer)
    accepted = set(inspect.signature(cls.__init__).parameters)
    if "params" not in accepted:  # e.g. MuonAdamW, built from two inner optimizers
        raise ConfigError(f"parallel.strategy 'zero1' shards an optimizer built from (params, **defaults); "
                          f"{cls.__name__} is not. Use ddp with this optimizer")
    accepted -= {"self", "params"}
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    groups = [{k: v for k, v in g.items()} for g in optimizer.param_groups]
    return ZeroRedundancyOptimizer(groups, optimizer_class=cls, **defaults)


def fsdp_no_sync(module: nn.Module) -> Callable[[], contextlib.AbstractContextManager]:
    """FSDP2's gradient-accumulation switch as a context manager (grads stay unsharded meanwhile)."""

    @contextlib.contextmanager
    def ctx():
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)

    return ctx


def check_strategy(strategy: str, cfg: RunConfig, env: DistEnv) -> None:
    """Refuse combinations that cannot work, with the key to change."""
    p = cfg.parallel
    if strategy not in STRATEGIES:
        raise ConfigError(f"parallel.strategy expects one of {['auto', *STRATEGIES]}, got {strategy!r}")
    if strategy == "single" and env.world_size > 1:
        raise ConfigError(f"parallel.strategy 'single' with {env.world_size} processes; "
                          f"use ddp, zero1, zero2, zero3 or hsdp (or auto)")
    if p.cpu_offload:
        if strategy not in FSDP_STRATEGIES:
            raise ConfigError(f"parallel.cpu_offload applies to zero2/zero3/hsdp, not '{strategy}'")
        if env.device.type != "cuda":
            raise ConfigError(f"parallel.cpu_offload moves FSDP parameters and optimizer state from GPU to host "
                              f"memory; it needs CUDA, but this run is on {env.device.type}")
    if cfg.optim.name == "muon" and strategy in FSDP_STRATEGIES:
        # Newton-Schulz orthogonalises whole matrices; FSDP hands the optimizer row shards of them
        raise ConfigError(f"optim.name 'muon' needs whole weight matrices on each rank; use parallel.strategy "
                          f"ddp (or single), not '{strategy}'")
    if strategy == "hsdp":
        replicas = p.replicate_degree or env.num_nodes
        if replicas < 1 or env.world_size % replicas:
            raise ConfigError(f"parallel.replicate_degree ({replicas}) must divide the world size ({env.world_size})")
    if p.bucket_mb <= 0:
        raise ConfigError(f"parallel.bucket_mb must be > 0, got {p.bucket_mb}")


def _mesh(strategy: str, cfg: RunConfig, env: DistEnv):
    from torch.distributed.device_mesh import init_device_mesh

    if strategy != "hsdp":
        return init_device_mesh(env.device.type, (env.world_size,), mesh_dim_names=("shard",))
    # torchrun numbers ranks node by node, so rows of this [replicas, world/replicas] grid are nodes:
    # all-gather / reduce-scatter stay inside a node, only the all-reduce between replicas crosses nodes.
    replicas = cfg.parallel.replicate_degree or env.num_nodes
    return init_device_mesh(env.device.type, (replicas, env.world_size // replicas),
                            mesh_dim_names=("replicate", "shard"))


def _fully_shard(model: nn.Module, strategy: str, cfg: RunConfig, env: DistEnv):
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = _mesh(strategy, cfg, env)
    p = cfg.parallel
    mp = MixedPrecisionPolicy()
    if p.mixed_precision:
        reduce = torch.float32 if p.reduce_dtype == "fp32" else torch.bfloat16
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=reduce)
    offload = CPUOffloadPolicy() if p.cpu_offload else OffloadPolicy()
    reshard = strategy != "zero2"
    # one FSDP unit per transformer block: all-gather one block at a time (the peak is one block's
    # full weights); the root unit takes what is left (embedding, final norm, head).
    for block in model.blocks():
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard, mp_policy=mp, offload_policy=offload)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard, mp_policy=mp, offload_policy=offload)
    return mesh


def parallelize(model: nn.Module, cfg: RunConfig, env: DistEnv, init: bool = True) -> Parallelized:
    """Apply AC, compile and the data-parallel strategy to `model`.

    `model` may be on the meta device (the trainer builds it there): it gets storage on env.device
    after sharding (FSDP: each rank allocates only its shards) and before the DDP wrapper (which
    broadcasts rank 0's weights), then the deterministic init unless `init` is False (weights are
    loaded next). A model that already has storage is moved to env.device as it is.
    """
    from banyan.parallel.auto import choose_strategy
    from banyan.parallel.materialize import materialize

    if not any(p.is_meta for p in model.parameters()):
        model.to(env.device)  # built with storage (e.g. loaded from HF): shard from the device, as before
    strategy, why = choose_strategy(model, cfg, env)
    check_strategy(strategy, cfg, env)
    notes = [f"strategy {strategy}: {why}"]
    if cfg.train.activation_checkpointing != "none":
        from banyan.parallel.ac import apply_activation_checkpointing

        apply_activation_checkpointing(model, cfg.train.activation_checkpointing)
    if strategy in FSDP_STRATEGIES:
        if cfg.train.compile:
            # compile block by block, in place: FSDP's hooks sit between blocks, outside the graphs
            for block in model.blocks():
                block.compile()
        mesh = _fully_shard(model, strategy, cfg, env)
        # with CPU offload the sharded parameters live in host memory (FSDP moves them per use)
        materialize(model, torch.device("cpu") if cfg.parallel.cpu_offload else env.device, init)
        if strategy == "hsdp":  # pretrain prints notes[0]: say how the ranks were split there
            notes[0] += f"; mesh {mesh.shape[0]} replicas x {mesh.shape[1]} shards (shard within a node)"
        return Parallelized(model=model, raw=model, strategy=strategy, no_sync=fsdp_no_sync(model), notes=notes,
                            mesh=mesh)
    if cfg.parallel.mixed_precision:
        notes.append(f"parallel.mixed_precision applies to FSDP strategies; with {strategy} use train.dtype bf16")
    materialize(model, env.device, init)
    compiled = torch.compile(model) if cfg.train.compile else model
    out = Parallelized(model=compiled, raw=model, strategy=strategy, notes=notes)
    if strategy == "single":
        return out
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    ddp = DDP(compiled, device_ids=ids, bucket_cap_mb=cfg.parallel.bucket_mb,
              gradient_as_bucket_view=cfg.parallel.grad_as_bucket_view)
    out.model, out.no_sync = ddp, ddp.no_sync
    return out
