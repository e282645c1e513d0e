"""LoRA modules (banyan.model.lora): identity at init, merge == adapter forward, names, init plan, errors."""

import math

import pytest
import torch
import torch.nn as nn

from banyan.config import ModelConfig
from banyan.errors import ConfigError
from banyan.model import build_model
from banyan.model.lora import LoRALinear, apply_lora, has_lora, lora_state_dict, merge_lora
from banyan.parallel.materialize import init_sharded


def tiny(arch="llama", **kw):
    base = dict(arch=arch, vocab_size=97, n_layer=2, n_head=4, n_kv_head=2 if arch == "llama" else 0, d_model=32,
                max_seq_len=16)
    return ModelConfig(**{**base, **kw})


def adapted(arch="llama", rank=4, alpha=8.0, targets=None):
    torch.manual_seed(0)
    model = build_model(tiny(arch))
    targets = targets or (("q_proj", "v_proj", "down_proj") if arch == "llama" else ("c_attn", "c_proj", "c_fc"))
    base = {n: t.clone() for n, t in model.state_dict().items()}
    apply_lora(model, rank, alpha, 0.0, targets)
    return model, base


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_initial_forward_equals_base_and_names_stay_hf(arch):
    torch.manual_seed(0)
    plain = build_model(tiny(arch))
    model, base = adapted(arch)
    x = torch.randint(0, 97, (2, 9))
    assert torch.equal(model(x), plain(x))  # B = 0: exactly the base output
    names = list(model.state_dict())
    assert set(base) <= set(names)  # every base name unchanged (`...q_proj.weight`)
    extra = sorted(set(names) - set(base))
    assert extra and all(n.endswith((".lora_A", ".lora_B")) for n in extra)
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == extra
    assert set(lora_state_dict(model)) == set(extra)


def test_adapter_shapes_init_and_scale():
    model, _ = adapted(rank=3, alpha=6.0)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, LoRALinear) and q.scale == 2.0
    assert q.lora_A.shape == (3, 32) and q.lora_B.shape == (32, 3)
    assert torch.count_nonzero(q.lora_B) == 0
    bound = 1 / math.sqrt(32)  # kaiming_uniform_(a=sqrt(5)), as peft: U(-1/sqrt(in), 1/sqrt(in))
    assert q.lora_A.abs().max() <= bound and q.lora_A.abs().max() > bound / 2
    ref = torch.empty(3, 32)
    nn.init.kaiming_uniform_(ref, a=math.sqrt(5))  # same distribution family: same bound
    assert ref.abs().max() <= bound


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merged_forward_equals_adapter_forward(arch):
    model, base = adapted(arch)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.1)
    x = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        want = model(x)
        assert (want - build_model_from(base, arch)(x)).abs().max() > 1e-3  # the adapters do change the output
        merge_lora(model)
        got = model(x)
    assert not has_lora(model)
    assert sorted(model.state_dict()) == sorted(base)
    assert (got - want).abs().max() <= 1e-6 * max(1.0, want.abs().max().item())


def build_model_from(state, arch):
    m = build_model(tiny(arch))
    m.load_state_dict(state)
    return m


def test_manual_formula():
    lin = nn.Linear(5, 7)
    lora = LoRALinear(lin, 2, 4.0)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(3, 5)
    want = x @ lin.weight.T + lin.bias + 2.0 * (x @ lora.lora_A.T @ lora.lora_B.T)
    assert torch.allclose(lora(x), want, atol=1e-6)


def test_meta_build_then_plan_init_matches_eager():
    """Meta build + adapters, then materialize's piecewise init == the eager init_weights values."""
    torch.manual_seed(1)
    eager = build_model(tiny())
    apply_lora(eager, 4, 8.0)
    torch.manual_seed(1)
    eager.init_weights()
    model = build_model(tiny(), device="meta")
    apply_lora(model, 4, 8.0)
    from banyan.model.common import to_empty

    to_empty(model, torch.device("cpu"))
    torch.manual_seed(1)
    init_sharded(model)
    for (n, a), (_, b) in zip(eager.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), n
    # base draws come first: the base equals a plain model's with the same seed
    torch.manual_seed(1)
    plain = build_model(tiny(), device="meta")
    to_empty(plain, torch.device("cpu"))
    torch.manual_seed(1)
    plain.init_weights()
    for n, p in plain.named_parameters():
        assert torch.equal(p, model.get_parameter(n)), n


def test_bad_targets_are_config_errors():
    model = build_model(tiny())
    with pytest.raises(ConfigError, match=r"unknown module name 'qproj'.*q_proj"):
        apply_lora(model, 4, 8.0, 0.0, "qproj")
    with pytest.raises(ConfigError, match="match no linear layer"):
        apply_lora(build_model(tiny("gpt2")), 4, 8.0, 0.0, "q_proj")
    with pytest.raises(ConfigError, match="rank"):
        apply_lora(model, 0, 8.0)
