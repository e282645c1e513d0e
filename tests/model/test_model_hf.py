"""Hugging Face parity: logits of converted models match transformers' to fp32 precision, both ways."""

import json

import pytest
import torch

from banyan.config import ConfigError
from banyan.model import build_model, config_from_hf, config_to_hf, from_hf, to_hf

transformers = pytest.importorskip("transformers")

TOL = 1e-4
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}


def _perturb(model):
    """HF init leaves norms at 1 and biases at 0; randomise everything so every tensor's mapping is tested."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def hf_llama(tie=False, rope=None, **kw):
    torch.manual_seed(0)
    rope_parameters = {"rope_type": "default", "rope_theta": 50000.0, **(rope or {})}
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   rope_parameters=rope_parameters, tie_word_embeddings=tie, rms_norm_eps=1e-5, **kw)
    return _perturb(transformers.LlamaForCausalLM(cfg))


def hf_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=101, n_positions=64, n_embd=48, n_layer=2, n_head=4,
                                  bos_token_id=None, eos_token_id=None)
    return _perturb(transformers.GPT2LMHeadModel(cfg))


def max_diff(a, b):
    return (a - b).abs().max().item()


def _ids(vocab, T=80):
    return torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("tie,rope", [(False, None), (True, None), (False, LLAMA3), (True, LLAMA3)],
                         ids=["untied", "tied", "llama3-untied", "llama3-tied"])
def test_llama_parity_both_directions(tie, rope):
    hf = hf_llama(tie, rope)
    model = from_hf(hf)
    c = model.config
    assert (c.n_head, c.n_kv_head, c.d_ff, c.rope_theta, c.tie_embeddings) == (4, 2, 176, 50000.0, tie)
    assert c.rope_scaling == ("llama3" if rope else "none")
    x = _ids(97)
    with torch.no_grad():
        ref, ours = hf(x).logits, model(x)
        assert max_diff(ref, ours) < TOL
        back = to_hf(model)
        assert max_diff(back(x).logits, ours) < TOL
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie


def test_llama3_scaling_changes_logits_past_short_wavelengths():
    """Guards the scaled parity test against passing vacuously."""
    x = _ids(97)
    with torch.no_grad():
        plain, scaled = from_hf(hf_llama(rope=None))(x), from_hf(hf_llama(rope=LLAMA3))(x)
    assert max_diff(plain, scaled) > 1e-3


def test_gpt2_parity_both_directions():
    hf = hf_gpt2()
    model = from_hf(hf)
    assert model.config.arch == "gpt2" and model.config.d_ff == 4 * 48
    x = _ids(101, 64)
    with torch.no_grad():
        ref, ours = hf(x).logits, model(x)
        assert max_diff(ref, ours) < TOL
        back = to_hf(model)
        assert max_diff(back(x).logits, ours) < TOL
    # the fused qkv weight was transposed from Conv1D's [in, out]
    torch.testing.assert_close(model.transformer.h[0].attn.c_attn.weight, hf.transformer.h[0].attn.c_attn.weight.t())


def test_banyan_model_to_hf_and_back(make_config):
    torch.manual_seed(0)
    model = build_model(make_config("llama", rope_scaling="llama3", rope_original_max_seq_len=16, tie_embeddings=True))
    x = _ids(97, 40)
    with torch.no_grad():
        hf = to_hf(model)
        assert max_diff(hf(x).logits, model(x)) < TOL
        again = from_hf(hf)
        assert max_diff(again(x), model(x)) < TOL


@pytest.mark.parametrize("activation,hf_name", [("gelu", "gelu"), ("gelu_tanh", "gelu_new")])
def test_gpt2_activation_reaches_hf(make_config, activation, hf_name):
    """From-scratch GPT-2 uses exact GELU by default; either activation exports to the HF name computing it."""
    torch.manual_seed(0)
    model = build_model(make_config("gpt2", activation=activation))
    x = _ids(model.config.vocab_size, 40)
    with torch.no_grad():
        for p in model.parameters():  # activations of order 1, where the two GELUs differ by ~1e-3
            p.add_(torch.randn_like(p) * 0.3)
        hf = to_hf(model)
        assert hf.config.activation_function == hf_name
        assert max_diff(hf(x).logits, model(x)) < TOL
        assert from_hf(hf).config.activation == activation
        # a swapped activation shows in the logits
        other = build_model(make_config("gpt2", activation="gelu_tanh" if activation == "gelu" else "gelu"))
        other.load_state_dict(model.state_dict())
        assert max_diff(other(x), model(x)) > 10 * TOL


def test_gpt2_without_biases_exports_zero_biases(make_config):
    """model.bias = false (nanoGPT's layout): no bias parameter anywhere; HF's GPT2, which always has them,
    gets zeros and computes the same logits; imported back it is a biased GPT-2 with zero biases."""
    torch.manual_seed(0)
    model = build_model(make_config("gpt2", bias=False))
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if n.endswith(".bias")]
    biased = build_model(make_config("gpt2"))
    assert len(list(biased.parameters())) - len(names) == 6 * biased.config.n_layer + 1  # 6 per block + ln_f
    x = _ids(model.config.vocab_size, 40)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        hf = to_hf(model)
        hf_biases = {n: t for n, t in hf.state_dict().items() if n.endswith(".bias") and ".attn.bias" not in n}
        assert len(hf_biases) == 6 * model.config.n_layer + 1 and all(not t.any() for t in hf_biases.values())
        assert hf.transformer.h[0].attn.c_attn.bias.shape == (3 * model.config.d_model,)
        assert max_diff(hf(x).logits, model(x)) < TOL
        again = from_hf(hf)
        assert again.config.bias and max_diff(again(x), model(x)) < TOL


def test_config_round_trip(make_config):
    for cfg in (make_config("llama", rope_scaling="llama3", rope_factor=4.0, rope_original_max_seq_len=16,
                                    norm_eps=1e-6).finalize(),
                make_config("gpt2", d_ff=80, dropout=0.1).finalize(),
                make_config("gpt2", activation="gelu_tanh").finalize()):
        assert config_from_hf(config_to_hf(cfg)) == cfg
        assert config_from_hf(config_to_hf(cfg).to_dict()) == cfg


def test_load_from_checkpoint_folders(tmp_path):
    from safetensors.torch import save_file

    hf = hf_llama(tie=True)
    x = _ids(97, 30)
    with torch.no_grad():
        ref = hf(x).logits
    hf.save_pretrained(tmp_path / "st")  # safetensors, tied head omitted from the file
    config = hf.config.to_dict()
    sd = {k: v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    keys = sorted(sd)
    # sharded safetensors with an index, and a legacy pytorch_model.bin
    (tmp_path / "sharded").mkdir()
    shards = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(tmp_path / "sharded" / name))
    weight_map = {k: name for name, ks in shards.items() for k in ks}
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "bin").mkdir()
    torch.save(sd, tmp_path / "bin" / "pytorch_model.bin")
    for d in ("sharded", "bin"):
        (tmp_path / d / "config.json").write_text(json.dumps(config))
    for d in ("st", "sharded", "bin"):
        with torch.no_grad():
            assert max_diff(from_hf(tmp_path / d)(x), ref) < TOL, d


def test_gpt2_hub_layout_without_transformer_prefix(tmp_path):
    from safetensors.torch import save_file

    hf = hf_gpt2()
    sd = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    x = _ids(101, 20)
    with torch.no_grad():
        assert max_diff(from_hf(str(tmp_path))(x), hf(x).logits) < TOL


def test_old_style_rope_fields_are_read():
    """transformers 4.x config.json: rope_theta at top level, llama3 settings under rope_scaling."""
    old = {"model_type": "llama", "vocab_size": 97, "hidden_size": 64, "intermediate_size": 176,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 128, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
           "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    cfg = config_from_hf(old)
    assert (cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor, cfg.rope_original_max_seq_len) == \
        (500000.0, "llama3", 32.0, 8192)
    assert config_from_hf({**old, "rope_scaling": None}).rope_scaling == "none"


@pytest.mark.parametrize("change,field", [
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"head_dim": 32}, "head_dim"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope_type"),
    ({"model_type": "mistral"}, "model_type"),
    ({"sliding_window": 4096}, "'sliding_window' = 4096"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}, "rope_parameters.rope_type"),
    ({"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling.rope_type"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "'architectures'"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "quantization_config"),
])
def test_unsupported_llama_configs_name_the_field(change, field):
    base = hf_llama().config.to_dict()
    with pytest.raises(ConfigError, match=field):
        config_from_hf({**base, **change})


def test_unsupported_hf_config_object_and_gpt2_fields():
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, num_attention_heads=4, attention_bias=True)
    with pytest.raises(ConfigError, match="attention_bias"):
        from_hf(transformers.LlamaForCausalLM(cfg))
    base = hf_gpt2().config.to_dict()
    with pytest.raises(ConfigError, match="activation_function"):
        config_from_hf({**base, "activation_function": "relu"})
    with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
        config_from_hf({**base, "scale_attn_by_inverse_layer_idx": True})


def test_bad_checkpoint_folders(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_llama().config.to_dict()))
    with pytest.raises(ConfigError, match="no weights"):
        from_hf(tmp_path)
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": torch.zeros(97, 64)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match="'tie_word_embeddings' = False but the weights have no lm_head"):
        from_hf(tmp_path)
    save_file({"model.embed_tokens.weight": torch.zeros(97, 64), "lm_head.weight": torch.zeros(97, 64)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match="missing"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        from_hf(tmp_path)


def test_a_tied_config_with_a_distinct_head_is_refused(tmp_path):
    hf = hf_llama(tie=False)
    hf.config.tie_word_embeddings = True  # config says tied, the weights hold two different matrices
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match="'tie_word_embeddings' = True but the weights hold an lm_head"):
        from_hf(tmp_path)
