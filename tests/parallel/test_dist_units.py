"""Single-process pieces of banyan.parallel: the auto strategy's choices and reasons, refused combinations,
launcher arguments, config comparison across ranks, bandwidth formulas."""

import pytest
import torch

from banyan.config import ConfigError, RunConfig, load_config
from banyan.parallel import auto
from banyan.parallel.env import DistEnv, _diff_keys, agree_on_errors, check_same_config, gather_json
from banyan.parallel.launch import alias_nproc, torchrun_command
from banyan.parallel.wrap import check_strategy, parallelize, zero_redundancy

GB = 2**30


def cfg_for(**over):
    base = {"model": {"arch": "llama", "n_layer": 2, "n_head": 2, "d_model": 32, "max_seq_len": 64, "vocab_size": 50},
            "train": {"micro_batch": 2, "seq_len": 16}}
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v}
    return load_config(RunConfig, overrides=base).finalize()


def fake_env(world=4, local=4):
    return DistEnv(rank=0, local_rank=0, world_size=world, local_world_size=local, device=torch.device("cpu"))


class Big(torch.nn.Module):
    """A stand-in with `n` parameters in 4 equal blocks (auto only counts parameters)."""

    def __init__(self, n):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(n // 4, 1, bias=False) for _ in range(4))

    def blocks(self):
        return self.layers


@pytest.mark.parametrize("free_gb, world, local, want", [
    (100, 4, 4, "ddp"),      # 16 B/param * 1e9 = 14.9 GB fits
    (13, 4, 4, "zero1"),     # 8 B/param + 8/4 = 10 B/param = 9.3 GB
    (9, 4, 4, "zero2"),      # 4 + 12/4 = 7 B/param = 6.5 GB
    (5, 4, 4, "zero3"),      # 16/4 = 4 B/param = 3.7 GB
    (8, 8, 4, "hsdp"),       # two nodes: 16/4 per node + 2 blocks = 5.6 GB fits, zero1 (8.4 GB) does not
    (1, 4, 4, "zero3"),      # nothing fits: zero3 with advice
])
def test_auto_picks_by_memory_and_nodes(monkeypatch, free_gb, world, local, want):
    monkeypatch.setattr(auto, "free_memory_bytes", lambda env: int(free_gb * GB))
    monkeypatch.setattr(auto, "activation_bytes", lambda cfg: 0.0)
    cfg = cfg_for(parallel={"strategy": "auto"})
    with torch.device("meta"):  # a billion parameters, no memory
        model = Big(10**9)
    strategy, why = auto.choose_strategy(model, cfg, fake_env(world, local))
    assert strategy == want, why
    assert why.startswith("auto: ") and "GB free per rank" in why and f"on {world // local} node(s)" in why
    if free_gb == 1:
        assert "cpu_offload" in why


def test_auto_single_process_and_explicit():
    one = auto.choose_strategy(Big(400), cfg_for(parallel={"strategy": "auto"}), DistEnv())
    assert one == ("single", "one process")
    assert auto.choose_strategy(Big(400), cfg_for(parallel={"strategy": "zero2"}), fake_env())[0] == "zero2"


def test_activation_estimate_shrinks_with_checkpointing():
    full = auto.activation_bytes(cfg_for(train={"activation_checkpointing": "full"}))
    none = auto.activation_bytes(cfg_for())
    assert 0 < full < none


@pytest.mark.parametrize("over, strategy, match", [
    ({"parallel": {"cpu_offload": True}}, "zero3", "needs CUDA"),
    ({"parallel": {"cpu_offload": True}}, "ddp", "applies to zero2/zero3/hsdp"),
    ({"optim": {"name": "muon"}}, "zero2", "whole weight matrices"),
    ({"parallel": {"replicate_degree": 3}}, "hsdp", "must divide the world size"),
    ({}, "single", "'single' with 4 processes"),
])
def test_refused_combinations(over, strategy, match):
    with pytest.raises(ConfigError, match=match):
        check_strategy(strategy, cfg_for(**over), fake_env())


def test_single_process_parallelize_is_identity():
    from banyan.model import build_model

    cfg = cfg_for(parallel={"strategy": "auto"})
    model = build_model(cfg.model)
    par = parallelize(model, cfg, DistEnv())
    assert par.strategy == "single" and par.model is model and par.full_model_on_each_rank
    opt = torch.optim.AdamW(model.parameters())
    assert par.shard_optimizer(opt) is opt
    t = torch.tensor(3.0)
    assert par.all_reduce_mean(t) is t


def test_zero1_refuses_composite_optimizers():
    class Pair(torch.optim.Optimizer):
        def __init__(self, a, b):
            self.a, self.b = a, b
            super().__init__(a.param_groups + b.param_groups, {})

    p, q = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ConfigError, match="Use ddp"):
        zero_redundancy(Pair(torch.optim.SGD([p], lr=0.1), torch.optim.SGD([q], lr=0.1)))


def test_launcher_arguments():
    assert alias_nproc(["--nproc", "4", "--x", "--nproc=2"]) == ["--parallel.nproc", "4", "--x", "--parallel.nproc=2"]
    cmd = torchrun_command(2, ["pretrain", "--out", "r"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "banyan",
                       "pretrain", "--out", "r"]
    multi = torchrun_command(4, ["pretrain"], nnodes=2, rdzv_endpoint="node0:29500", max_restarts=3)
    assert "--nnodes=2" in multi and "--rdzv_backend=c10d" in multi and "--rdzv_endpoint=node0:29500" in multi
    assert "--max_restarts=3" in multi and "--standalone" not in multi


def test_config_comparison_names_keys():
    a = {"optim": {"lr": 1.0, "eps": 1e-8}, "out": "x"}
    b = {"optim": {"lr": 2.0, "eps": 1e-8}, "out": "y", "extra": 1}
    assert _diff_keys(a, b) == ["extra", "optim.lr", "out"]
    assert gather_json({"k": [1, "é"]}, DistEnv()) == [{"k": [1, "é"]}]
    check_same_config(a, DistEnv())  # one rank: nothing to compare


def test_agree_on_errors_single_process_reraises():
    from banyan.errors import BanyanError

    with pytest.raises(BanyanError, match="boom"):
        with agree_on_errors(DistEnv()):
            raise BanyanError("boom")
    with agree_on_errors(DistEnv()):
        pass


def test_bus_bandwidth_factors_and_sizes():
    from banyan.errors import BanyanError
    from banyan.parallel.bench_comm import BenchCommConfig, bus_factor, sizes_mb

    assert bus_factor("all_reduce", 4) == pytest.approx(1.5)
    assert bus_factor("all_gather", 4) == pytest.approx(0.75) == bus_factor("reduce_scatter", 4)
    assert sizes_mb(BenchCommConfig()) == [1, 4, 16, 64, 256, 1024]
    with pytest.raises(BanyanError, match="min_mb"):
        sizes_mb(BenchCommConfig(min_mb=8, max_mb=1))


def test_one_device_resolver_names_the_flag(monkeypatch):
    from banyan.parallel.env import resolve_device
    from banyan.plan import validate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device is 'cuda' but CUDA is not available"):
        resolve_device("cuda", 1)
    with pytest.raises(ConfigError, match="--device is 'cuda:0' but CUDA is not available"):
        validate.resolve_device("cuda:0", flag="--device")
    with pytest.raises(ConfigError, match="train.device is 'tpu9'; expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu9")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", 3) == resolve_device("cuda", 3) == torch.device("cuda", 3)  # the local rank's GPU
    assert validate.resolve_device is resolve_device  # the planner's --validate uses the same resolver
