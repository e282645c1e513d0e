"""CUDA parallel paths and 8-bit optimizers: DDP and FSDP2 over NCCL at world size 1 match one process;
8-bit AdamW (bitsandbytes, torchao) keeps <= 2.1 bytes of state per parameter on CUDA. Skipped without CUDA."""

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from gpukit import batches, strict_fp32  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

MODEL = {"arch": "llama", "vocab_size": 512, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 256,
         "max_seq_len": 256}


def run_cfg(strategy: str, optim: str = "adamw", **model):
    from banyan.config import RunConfig, load_config

    return load_config(RunConfig, overrides={
        "model": {**MODEL, **model}, "optim": {"name": optim, "lr": 3e-3, "warmup_steps": 0},
        "train": {"device": "cuda", "seq_len": 128, "micro_batch": 4, "dtype": "fp32", "seed": 0},
        "parallel": {"strategy": strategy, "mixed_precision": False}})


@pytest.fixture(scope="module")
def nccl_group():
    """A one-rank NCCL process group for the module (what torchrun --nproc_per_node 1 would give)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    yield
    dist.destroy_process_group()


def losses(strategy: str, steps: int = 4) -> list[float]:
    from banyan.parallel.env import DistEnv
    from banyan.train.lm import causal_lm_loss
    from banyan.train.task import labelled_count
    from banyan.train.step import train_step
    from banyan.train.trainer import build_parallel

    strict_fp32()
    cfg = run_cfg(strategy)
    torch.manual_seed(0)
    par, opt = build_parallel(cfg, DistEnv(device=torch.device("cuda", 0)))
    assert par.strategy == strategy
    out = []
    for x in batches(steps, b=4, t=128):
        mbs = [{"input_ids": x[:2, :-1], "labels": x[:2, 1:]}, {"input_ids": x[2:, :-1], "labels": x[2:, 1:]}]
        r = train_step(par.model, opt, mbs, lambda m, b: causal_lm_loss(m, b), labelled_count, 1.0, None,
                       par.no_sync)
        out.append(r.loss)
    return out


@pytest.mark.parametrize("strategy", ["ddp", "zero3", "zero2"])
def test_ddp_and_fsdp2_over_nccl_at_world_size_1_match_one_process(nccl_group, strategy):
    """Tolerance: each step's loss within 1e-5 of the single-process run (fp32, TF32 off)."""
    assert dist.get_backend() == "nccl" and dist.get_world_size() == 1
    single, other = losses("single"), losses(strategy)
    assert single[-1] < single[0]
    for step, (a, b) in enumerate(zip(single, other)):
        assert abs(a - b) <= 1e-5, f"{strategy} step {step}: {b:.6f} vs single {a:.6f}"


@pytest.mark.parametrize("optim,module", [("adamw8bit", "bitsandbytes"), ("adamw8bit-torchao", "torchao")])
def test_8bit_adamw_state_is_at_most_2_1_bytes_per_param_on_cuda(optim, module):
    pytest.importorskip(module)
    from banyan.model import build_model
    from banyan.train.optim import build_optimizer, optimizer_state_bytes

    cfg = run_cfg("single", optim)
    torch.manual_seed(0)
    model = build_model(cfg.model, device="cpu").cuda()
    opt = build_optimizer(model, cfg.optim, "cuda")
    x = batches(1, b=2, t=128)[0]
    torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    opt.step()
    n = sum(p.numel() for p in model.parameters())
    per_param = optimizer_state_bytes(opt) / n
    assert 1.9 <= per_param <= 2.1, f"{optim}: {per_param:.3f} B/param"
    devices = {t.device.type for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor)
               and t.numel() > 1}
    assert devices == {"cuda"}, f"{optim} state on {devices}"
