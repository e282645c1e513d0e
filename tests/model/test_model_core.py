"""The model interface: construction, init, counting, FLOPs, RoPE, causality and length checks."""

import math

import pytest
import torch
import torch.nn.functional as F

from banyan.errors import BanyanError
from banyan.config import ConfigError
from banyan.model import GPT2, Llama, build_model
from banyan.model.llama import apply_rope, llama3_scale, rope_cos_sin, rope_inv_freq

ARCHS = ["llama", "gpt2"]


def test_vocab_size_zero_is_a_config_error(make_config):
    with pytest.raises(ConfigError, match="vocab_size"):
        build_model(make_config(vocab_size=0))


def test_gpt2_rejects_grouped_query_attention(make_config):
    with pytest.raises(ConfigError, match="n_kv_head"):
        build_model(make_config("gpt2", n_kv_head=2))


def test_build_model_dispatches_and_finalizes(make_config):
    cfg = make_config("llama", n_kv_head=0, d_ff=0)
    model = build_model(cfg)
    assert isinstance(model, Llama) and model.config is cfg
    assert cfg.n_kv_head == 4 and cfg.d_ff == 128  # 8/3*32 = 85 rounded up to a multiple of 64
    assert isinstance(build_model(make_config("gpt2")), GPT2)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_is_hidden_states_times_head(arch, make_config):
    torch.manual_seed(0)
    model = build_model(make_config(arch))
    x = torch.randint(0, 97, (2, 9))
    logits = model(x)
    assert logits.shape == (2, 9, 97)
    assert model.hidden_states(x).shape == (2, 9, 32)
    assert model.output_weight().shape == (97, 32)
    torch.testing.assert_close(logits, F.linear(model.hidden_states(x), model.output_weight()), rtol=0, atol=0)
    torch.testing.assert_close(model(x, return_hidden=True), model.hidden_states(x), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_init_is_deterministic_under_manual_seed(arch, make_config):
    torch.manual_seed(3)
    a = build_model(make_config(arch)).state_dict()
    torch.manual_seed(3)
    b = build_model(make_config(arch)).state_dict()
    torch.manual_seed(4)
    c = build_model(make_config(arch)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])


def test_output_projections_are_scaled_by_depth(make_config):
    torch.manual_seed(0)
    n_layer = 8
    model = build_model(make_config("llama", d_model=256, n_head=4, n_layer=n_layer, init_std=0.02))
    block = model.blocks()[0]
    scaled = 0.02 / math.sqrt(2 * n_layer)
    assert block.self_attn.o_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert block.mlp.down_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert block.self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(block.input_layernorm.weight, torch.ones(256))
    gpt = build_model(make_config("gpt2", d_model=256, n_head=4, n_layer=n_layer))
    assert gpt.blocks()[0].mlp.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert torch.count_nonzero(gpt.blocks()[0].attn.c_attn.bias) == 0


def test_tied_and_untied_heads(make_config):
    tied = build_model(make_config("llama", tie_embeddings=True))
    untied = build_model(make_config("llama", tie_embeddings=False))
    gpt = build_model(make_config("gpt2", tie_embeddings=False))  # gpt2 is always tied
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    assert gpt.lm_head.weight is gpt.transformer.wte.weight and gpt.config.tie_embeddings


@pytest.mark.parametrize("arch,tie", [("llama", False), ("llama", True), ("gpt2", True)])
def test_num_params_counts_unique_tensors(arch, tie, make_config):
    model = build_model(make_config(arch, tie_embeddings=tie))
    unique = {p.data_ptr(): p.numel() for p in model.state_dict().values()}
    assert model.num_params() == sum(unique.values())
    embeddings = 97 * 32 + (64 * 32 if arch == "gpt2" else 0)  # token table (+ learned positions)
    assert model.num_params(exclude_embeddings=True) == model.num_params() - embeddings


def test_llama_param_count_closed_form(make_config):
    cfg = make_config("llama", d_ff=96)
    model = build_model(cfg)
    hd, kv = 8, 2
    per_layer = 2 * 32 * 32 + 2 * 32 * kv * hd + 3 * 32 * 96 + 2 * 32  # q,o + k,v + SwiGLU + 2 norms
    assert model.num_params() == 2 * per_layer + 32 + 2 * 97 * 32  # + final norm + embed + untied head


@pytest.mark.parametrize("arch", ARCHS)
def test_flops_per_token_closed_form(arch, make_config):
    cfg = make_config(arch, d_ff=96)
    model = build_model(cfg)
    D, V, L, seq = 32, 97, 2, 48
    if arch == "llama":
        block = 2 * D * D + 2 * D * (2 * 8) + 3 * D * 96  # q,o; k,v with 2 KV heads of 8; gate,up,down
    else:
        block = 3 * D * D + D * D + 2 * D * 96  # c_attn, attn c_proj, c_fc, mlp c_proj
    expected = 6 * (L * block + V * D) + 12 * L * D * seq
    assert model.flops_per_token(seq) == pytest.approx(expected, rel=0, abs=0)


# ----------------------------------------------------------------------------- rotary embeddings
def test_rope_pairs_dim_i_with_i_plus_half(make_config):
    """HF rotate_half layout: (x[i], x[i+hd/2]) is rotated by angle pos*inv_freq[i]."""
    cfg = make_config("llama").finalize()
    hd = cfg.head_dim
    x = torch.randn(1, 1, 5, hd)
    cos, sin = rope_cos_sin(cfg, 3, 5, torch.device("cpu"))
    out = apply_rope(x, cos, sin)
    angles = torch.arange(3, 8, dtype=torch.float32)[:, None] * rope_inv_freq(cfg)[None, :]  # [T, hd/2]
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2:]) * torch.polar(torch.ones_like(angles), angles)
    torch.testing.assert_close(out, torch.cat([z.real, z.imag], dim=-1), atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position(make_config):
    cfg = make_config("llama").finalize()
    q, k = torch.randn(1, 1, 1, cfg.head_dim), torch.randn(1, 1, 1, cfg.head_dim)

    def score(m, n):
        qm = apply_rope(q, *rope_cos_sin(cfg, m, 1, torch.device("cpu")))
        kn = apply_rope(k, *rope_cos_sin(cfg, n, 1, torch.device("cpu")))
        return (qm * kn).sum().item()

    assert score(10, 7) == pytest.approx(score(33, 30), abs=1e-4)
    assert score(10, 7) != pytest.approx(score(10, 2), abs=1e-3)


def test_llama3_scaling_bands(make_config):
    cfg = make_config("llama", rope_scaling="llama3", rope_factor=8.0, rope_low_freq_factor=1.0,
                      rope_high_freq_factor=4.0, rope_original_max_seq_len=64, d_model=128, n_head=2).finalize()
    base = 1.0 / (cfg.rope_theta ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    scaled = llama3_scale(base, cfg)
    wavelen = 2 * math.pi / base
    high, low = wavelen < 64 / 4, wavelen > 64 / 1
    mid = ~(high | low)
    assert high.any() and low.any() and mid.any()
    torch.testing.assert_close(scaled[high], base[high])
    torch.testing.assert_close(scaled[low], base[low] / 8)
    # in between: interpolated, strictly between the two extremes
    assert torch.all(scaled[mid] < base[mid]) and torch.all(scaled[mid] > base[mid] / 8)
    torch.testing.assert_close(rope_inv_freq(cfg), scaled)


def test_llama3_rejects_equal_band_factors(make_config):
    with pytest.raises(ConfigError, match="rope_high_freq_factor"):
        build_model(make_config("llama", rope_scaling="llama3", rope_low_freq_factor=4.0, rope_high_freq_factor=4.0))


# ----------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("arch", ARCHS)
def test_causal_future_tokens_do_not_change_past_logits(arch, make_config):
    torch.manual_seed(0)
    model = build_model(make_config(arch))
    x = torch.randint(0, 97, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 97
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=0)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@pytest.mark.parametrize("arch", ARCHS)
def test_positions_past_max_seq_len_raise(arch, make_config):
    model = build_model(make_config(arch, max_seq_len=16))
    model(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(BanyanError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(BanyanError, match="max_seq_len"):
        model(torch.zeros(1, 2, dtype=torch.long), start_pos=15)


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_only_in_train_mode_and_gradients_reach_every_parameter(arch, make_config):
    torch.manual_seed(0)
    model = build_model(make_config(arch, dropout=0.3))
    x = torch.randint(0, 97, (2, 10))
    model.train()
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)
    F.cross_entropy(a.flatten(0, 1), x.flatten()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_building_a_model_does_not_import_dynamo():
    """The meta-device build skips default inits: torch's meta normal_() imports torch._dynamo (seconds)."""
    import subprocess
    import sys

    code = ("import sys; from banyan.model import ModelConfig, build_model; "
            "[build_model(ModelConfig(arch=a, vocab_size=64), device='meta') for a in ('llama', 'gpt2')]; "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
