"""The planner's byte model against real tensors: shapes, static memory per optimizer, activations, FLOPs."""

import pytest
import torch

from banyan.config import ModelConfig, OptimConfig
from banyan.parallel.ac import apply_activation_checkpointing
from banyan.losses import lm_loss
from banyan.model import build_model
from banyan.plan import memory as M
from banyan.plan import speed as S
from banyan.plan.planner import Workload, memory_bytes
from banyan.plan.validate import SavedTensorMeter
from banyan.train.optim import build_optimizer, optimizer_state_bytes, tensor_bytes


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def cfg(arch="llama", **kw):
    # d_model 64 / 2 KV heads: q_proj has 4096 values (8-bit in bnb), k_proj 2048 (fp32): both paths
    base = dict(arch=arch, vocab_size=300, n_layer=2, n_head=4, n_kv_head=2 if arch == "llama" else 0, d_model=64,
                max_seq_len=32)
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("kw", [dict(arch="llama"), dict(arch="llama", tie_embeddings=False), dict(arch="gpt2"),
                                dict(arch="gpt2", bias=False)])
def test_param_specs_are_the_models_parameters(kw):
    c = cfg(**kw)
    model = build_model(c)
    specs = M.param_specs(c)
    assert [(s.name, s.shape) for s in specs] == [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    assert M.matmul_params(c, specs) == model.matmul_params()
    assert S.flops_per_token(c, specs, 32) == model.flops_per_token(32)


@pytest.mark.parametrize("optim", ["adamw", "adamw8bit", "muon"])
def test_static_memory_equals_real_tensor_bytes(optim):
    c = cfg()
    torch.manual_seed(0)
    model = build_model(c)
    opt = build_optimizer(model, OptimConfig(name=optim))
    x = torch.randint(0, c.vocab_size, (2, 17))
    lm_loss(model.hidden_states(x[:, :-1]), model.output_weight(), x[:, 1:]).backward()
    grads = tensor_bytes(p.grad for p in model.parameters())
    opt.step()
    predicted = M.static_bytes(M.param_specs(c), optim)
    assert predicted == {"params": tensor_bytes(model.parameters()), "grads": grads,
                         "optim": optimizer_state_bytes(opt)}
    # sharding as banyan.parallel.wrap does it: ZeRO-1 (ZeroRedundancyOptimizer) the optimizer state,
    # ZeRO-2/3 (FSDP2) everything; FSDP accumulating over micro-batches holds unsharded fp32 grads too
    work = Workload(c, "tiny", seq=16, global_tokens=16 * 8, compute_bytes=4)
    ddp, z1, z2, z3 = (memory_bytes(work, s, optim, "none", 1, 4, cuda=False) for s in ("ddp", "zero1", "zero2",
                                                                                          "zero3"))
    assert ddp["optim"] == predicted["optim"] and z1["optim"] == predicted["optim"] / 4
    assert z1["grads"] == predicted["grads"] and z1["params"] == predicted["params"]
    for z in (z2, z3):
        assert z["params"] == predicted["params"] / 4 and z["grads"] == predicted["grads"] / 4
    accum = memory_bytes(work, "zero3", optim, "none", 1, 4, accum=2, cuda=False)
    assert accum["grads"] == predicted["grads"] / 4 + predicted["grads"]


@pytest.mark.parametrize("arch,ac,chunk", [("llama", "none", 0), ("llama", "full", 7), ("llama", "selective", 0),
                                           ("gpt2", "none", 7), ("gpt2", "full", 0)])
def test_saved_activations_match_the_formula(arch, ac, chunk):
    c = cfg(arch, n_layer=3)
    model = build_model(c)
    apply_activation_checkpointing(model, ac)
    mb, seq = 3, 24
    x = torch.randint(0, c.vocab_size, (mb, seq + 1))
    meter = SavedTensorMeter(list(model.parameters()))
    with meter():
        lm_loss(model.hidden_states(x[:, :-1]), model.output_weight(), x[:, 1:], chunk=chunk)
    predicted = M.activation_bytes(c, mb, seq, ac, chunk, e=4)["total"]
    if M.n_checkpointed(c.n_layer, ac):  # hooks see what is kept after forward, not the block being recomputed
        predicted -= mb * seq * M.layer_bytes_per_token(c, 4)
    assert abs(meter.bytes - predicted) <= 64  # a few scalars (loss normaliser) are not modelled


def test_activation_checkpointing_and_chunking_shrink_the_prediction():
    c = cfg(vocab_size=32000, d_model=256, n_head=4)
    none = M.activation_bytes(c, 4, 32, "none", 0, e=2)
    full = M.activation_bytes(c, 4, 32, "full", 0, e=2)
    chunked = M.activation_bytes(c, 4, 32, "none", 64, e=2)
    assert full["blocks"] < none["blocks"] and chunked["other"] < none["other"] / 10
    assert M.logits_buffer_bytes(c, 8192, 1024, 2) < M.logits_buffer_bytes(c, 8192, 0, 2) / 4


@pytest.mark.parametrize("arch,targets,optim", [("llama", "q_proj,v_proj,down_proj", "adamw"),
                                                ("llama", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                                                 "muon"),
                                                ("gpt2", "c_attn,c_proj,c_fc", "adamw8bit")])
def test_lora_static_memory_equals_real_tensor_bytes(arch, targets, optim):
    """LoRA: frozen base (params only), adapters with grads and optimizer state; names and order too."""
    from banyan.model.lora import apply_lora

    c = cfg(arch)
    torch.manual_seed(0)
    model = build_model(c)
    apply_lora(model, 4, 8.0, 0.0, targets)
    specs = M.param_specs(c, 4, targets)
    assert [(s.name, s.shape) for s in specs] == [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    assert [s.name for s in specs if not s.frozen] == [n for n, p in model.named_parameters() if p.requires_grad]
    opt = build_optimizer(model, OptimConfig(name=optim))
    x = torch.randint(0, c.vocab_size, (2, 17))
    lm_loss(model.hidden_states(x[:, :-1]), model.output_weight(), x[:, 1:]).backward()
    grads = tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
    opt.step()
    predicted = M.static_bytes(specs, optim)
    assert predicted == {"params": tensor_bytes(model.parameters()), "grads": grads,
                         "optim": optimizer_state_bytes(opt)}
    full = M.static_bytes(M.param_specs(c), optim)
    assert predicted["grads"] < full["grads"] / 4 and predicted["params"] > full["params"]
