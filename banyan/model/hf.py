"""Hugging Face conversion: HF Llama / GPT-2 checkpoints to banyan models and back.

Llama parameter names are identical on both sides; GPT-2 differs only in HF's Conv1D layers,
which store weights as [in, out] (we use nn.Linear, [out, in]) and in hub checkpoints that omit
the `transformer.` prefix. `transformers` is an optional extra: it is imported only by `to_hf`
and `config_to_hf`; reading a checkpoint folder needs only safetensors (or torch for .bin files).

RoPE settings: transformers >= 5 keeps them in `config.rope_parameters` (rope_type, rope_theta,
factor, low_freq_factor, high_freq_factor, original_max_position_embeddings); 4.x used
`rope_theta` plus a `rope_scaling` dict with the same keys. Both are read; the installed
version's form is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from banyan.model.config import ModelConfig
from banyan.errors import ConfigError

# GPT-2 projections that HF stores as Conv1D ([in, out]); transposed on the way in and out.
_GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# The one HF head class per model_type that banyan's models compute
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}
# Buffers some HF versions keep in GPT-2 / Llama state dicts; not parameters, so dropped.
_HF_BUFFERS = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def _getter(hf_config: Any):
    """Read a field from a transformers config object or a config.json dict alike."""
    if isinstance(hf_config, dict):
        return lambda key, default=None: hf_config.get(key, default)
    return lambda key, default=None: getattr(hf_config, key, default)


def _require(field: str, got: Any, expected: Any, why: str) -> None:
    if got != expected:
        raise ConfigError(f"HF config field '{field}' = {got!r} is not supported ({why}); expected {expected!r}")


def config_from_hf(hf_config: Any) -> ModelConfig:
    """A finalized ModelConfig from a HF LlamaConfig / GPT2Config (object or config.json dict).

    Raises ConfigError naming the field for anything banyan's models would compute differently.
    """
    get = _getter(hf_config)
    model_type = get("model_type")
    if get("quantization_config"):
        raise ConfigError("HF config field 'quantization_config' is set: quantized weights are not supported; "
                          "use a full-precision (fp32/bf16/fp16) checkpoint")
    archs = [a for a in (get("architectures") or []) if a != _ARCHITECTURES.get(model_type)]
    if model_type in _ARCHITECTURES and archs:
        raise ConfigError(f"HF config field 'architectures' = {archs!r} is not supported; "
                          f"expected [{_ARCHITECTURES[model_type]!r}] (a causal LM head)")
    if model_type == "llama":
        cfg = _llama_config_from_hf(get)
    elif model_type == "gpt2":
        cfg = _gpt2_config_from_hf(get)
    else:
        raise ConfigError(f"HF config field 'model_type' = {model_type!r} is not supported; expected 'llama' or 'gpt2'")
    return cfg.finalize()


def _llama_config_from_hf(get) -> ModelConfig:
    _require("hidden_act", get("hidden_act", "silu"), "silu", "banyan's Llama MLP is SwiGLU")
    _require("attention_bias", bool(get("attention_bias", False)), False, "banyan's Llama has no biases")
    _require("mlp_bias", bool(get("mlp_bias", False)), False, "banyan's Llama has no biases")
    # Mistral-style configs saved as llama: a window would change which keys each query sees
    _require("sliding_window", get("sliding_window"), None, "banyan's attention is full causal")
    _require("use_sliding_window", bool(get("use_sliding_window", False)), False, "banyan's attention is full causal")
    d_model, n_head = get("hidden_size"), get("num_attention_heads")
    head_dim = get("head_dim")
    if head_dim is not None and head_dim * n_head != d_model:
        _require("head_dim", head_dim, d_model // n_head, "banyan derives head_dim = hidden_size / num_attention_heads")
    # transformers >= 5: rope_parameters; 4.x: rope_theta + rope_scaling (which may be null)
    rope = dict(get("rope_parameters") or get("rope_scaling") or {})
    field = "rope_parameters" if get("rope_parameters") else "rope_scaling"
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ConfigError(f"HF config field '{field}.rope_type' = {rope_type!r} is not supported; "
                          "expected 'default' or 'llama3'")
    partial = rope.get("partial_rotary_factor", get("partial_rotary_factor", 1.0))
    _require(f"{field}.partial_rotary_factor", partial, 1.0, "banyan rotates the whole head")
    theta = rope.get("rope_theta", get("rope_theta", 10000.0))
    max_pos = get("max_position_embeddings")
    cfg = ModelConfig(
        arch="llama", vocab_size=get("vocab_size"), n_layer=get("num_hidden_layers"), n_head=n_head,
        n_kv_head=get("num_key_value_heads") or n_head, d_model=d_model, d_ff=get("intermediate_size"),
        max_seq_len=max_pos, rope_theta=float(theta), norm_eps=float(get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(get("tie_word_embeddings", False)), dropout=float(get("attention_dropout", 0.0) or 0.0),
        init_std=float(get("initializer_range", 0.02)),
    )
    if rope_type == "llama3":
        cfg.rope_scaling = "llama3"
        cfg.rope_factor = float(rope["factor"])
        cfg.rope_low_freq_factor = float(rope["low_freq_factor"])
        cfg.rope_high_freq_factor = float(rope["high_freq_factor"])
        cfg.rope_original_max_seq_len = int(rope.get("original_max_position_embeddings", max_pos))
    return cfg


# HF GPT-2 `activation_function` values banyan runs -> ModelConfig.activation (transformers ACT2FN names)
HF_GELU = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def _gpt2_config_from_hf(get) -> ModelConfig:
    act = get("activation_function", "gelu_new")
    if act not in HF_GELU:
        raise ConfigError(f"HF config field 'activation_function' = {act!r} is not supported; "
                          f"expected one of {sorted(HF_GELU)} (tanh-approximate or exact GELU)")
    _require("scale_attn_weights", bool(get("scale_attn_weights", True)), True, "attention is scaled by 1/sqrt(hd)")
    _require("scale_attn_by_inverse_layer_idx", bool(get("scale_attn_by_inverse_layer_idx", False)), False,
             "banyan does not scale attention per layer")
    _require("add_cross_attention", bool(get("add_cross_attention", False)), False, "banyan is decoder-only")
    _require("tie_word_embeddings", bool(get("tie_word_embeddings", True)), True, "banyan's GPT-2 head is tied")
    d_model = get("n_embd")
    # one dropout probability in banyan: residual dropout's value is taken for embeddings and attention too
    return ModelConfig(
        arch="gpt2", vocab_size=get("vocab_size"), n_layer=get("n_layer"), n_head=get("n_head"),
        d_model=d_model, d_ff=get("n_inner") or 4 * d_model, max_seq_len=get("n_positions"),
        norm_eps=float(get("layer_norm_epsilon", 1e-5)), tie_embeddings=True,
        dropout=float(get("resid_pdrop", 0.0)), init_std=float(get("initializer_range", 0.02)),
        activation=HF_GELU[act],
    )


def config_to_hf(cfg: ModelConfig, **overrides: Any):
    """The transformers LlamaConfig / GPT2Config for `cfg`; `overrides` (e.g. eos_token_id) are passed on."""
    import transformers

    cfg.finalize()
    if cfg.arch == "llama":
        kw: dict[str, Any] = dict(
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
            head_dim=cfg.head_dim, hidden_act="silu", max_position_embeddings=cfg.max_seq_len,
            rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False,
            attention_dropout=cfg.dropout, initializer_range=cfg.init_std,
        )
        rope: dict[str, Any] = {"rope_type": "default"}
        if cfg.rope_scaling == "llama3":
            rope = {"rope_type": "llama3", "factor": cfg.rope_factor, "low_freq_factor": cfg.rope_low_freq_factor,
                    "high_freq_factor": cfg.rope_high_freq_factor,
                    "original_max_position_embeddings": cfg.rope_original_max_seq_len}
        if int(transformers.__version__.split(".")[0]) >= 5:
            kw["rope_parameters"] = {**rope, "rope_theta": cfg.rope_theta}
        else:
            kw["rope_theta"] = cfg.rope_theta
            kw["rope_scaling"] = rope if cfg.rope_scaling == "llama3" else None
        return transformers.LlamaConfig(**{**kw, **overrides})
    if cfg.n_kv_head != cfg.n_head:
        raise ConfigError(f"gpt2 has no grouped-query attention: model.n_kv_head ({cfg.n_kv_head}) != model.n_head")
    kw = dict(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=cfg.d_ff,
        activation_function="gelu_new" if cfg.activation == "gelu_tanh" else "gelu", resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, layer_norm_epsilon=cfg.norm_eps,
        initializer_range=cfg.init_std, tie_word_embeddings=True,
    )
    if cfg.vocab_size <= 50256:  # GPT-2's default bos/eos (50256) would point outside a smaller vocabulary
        kw.update(bos_token_id=None, eos_token_id=None)
    return transformers.GPT2Config(**{**kw, **overrides})


# ----------------------------------------------------------------------------- state dicts
def state_dict_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF-named tensors -> banyan names/layouts (GPT-2: add `transformer.`, transpose Conv1D; tie the head)."""
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key.endswith(_HF_BUFFERS):
            continue
        if cfg.arch == "gpt2":
            if not key.startswith(("transformer.", "lm_head.")):
                key = "transformer." + key  # hub GPT-2 checkpoints store `h.0.attn...`, `wte.weight`, ...
            if key.endswith(_GPT2_CONV1D):
                t = t.t()
        out[key] = t
    embed = "transformer.wte.weight" if cfg.arch == "gpt2" else "model.embed_tokens.weight"
    if cfg.tie_embeddings and embed in out:
        out["lm_head.weight"] = out[embed]  # tied checkpoints usually omit the head
    return out


# Weights of the GPT-2 modules that carry a bias in HF's layout (and in banyan's unless model.bias is false)
_GPT2_BIASED = tuple(m + ".weight" for m in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj",
                                             "ln_f"))


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """banyan tensors -> HF names/layouts (the inverse of state_dict_from_hf).

    A GPT-2 built with model.bias = false gets zero biases: HF's GPT2 always has them, and x W^T + 0 is
    the same function, so the exported model's logits equal banyan's."""
    if cfg.arch != "gpt2":
        return dict(sd)
    out = {}
    for k, t in sd.items():
        out[k] = t.t().contiguous() if k.endswith(_GPT2_CONV1D) else t
        bias = k[:-len("weight")] + "bias"
        if k.endswith(_GPT2_BIASED) and bias not in sd:
            out[bias] = t.new_zeros(t.shape[0])  # [out] of an nn.Linear weight [out, in]; [D] of a LayerNorm
    return out


def load_hf_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    """Copy converted HF tensors into `model`, naming any missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise ConfigError(f"{where}: weights do not match the config: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    for k, t in expected.items():
        if sd[k].shape != t.shape:
            raise ConfigError(f"{where}: weight '{k}' has shape {tuple(sd[k].shape)}, expected {tuple(t.shape)}")
    with torch.no_grad():
        model.load_state_dict(sd, strict=True)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF checkpoint folder: model.safetensors, sharded safetensors, or pytorch_model.bin."""
    from safetensors.torch import load_file

    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = folder / index_name
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
        if not files and (folder / single).is_file():
            files = [single]
        if not files:
            continue
        sd: dict[str, torch.Tensor] = {}
        for name in files:
            path = folder / name
            if not path.is_file():
                raise ConfigError(f"{index}: lists shard '{name}', which does not exist")
            if name.endswith(".safetensors"):
                sd.update(load_file(str(path)))
            else:  # never unpickle arbitrary objects: tensors only
                sd.update(torch.load(path, map_location="cpu", weights_only=True))
        return sd
    raise ConfigError(f"{folder}: no weights found (expected model.safetensors, model.safetensors.index.json, "
                      "pytorch_model.bin or pytorch_model.bin.index.json)")


def check_tied_head(sd: dict[str, torch.Tensor], cfg: ModelConfig, where: str) -> None:
    """Refuse HF tensors whose head disagrees with `tie_word_embeddings` (banyan would silently
    drop a distinct head of a "tied" model, or leave an untied head without weights)."""
    head = sd.get("lm_head.weight")
    embed_keys = ("transformer.wte.weight", "wte.weight") if cfg.arch == "gpt2" else ("model.embed_tokens.weight",)
    embed = next((sd[k] for k in embed_keys if k in sd), None)
    if cfg.tie_embeddings and head is not None and embed is not None and not torch.equal(head, embed):
        raise ConfigError(f"{where}: HF config field 'tie_word_embeddings' = True but the weights hold an "
                          "lm_head.weight that differs from the token embedding")
    if not cfg.tie_embeddings and head is None:
        raise ConfigError(f"{where}: HF config field 'tie_word_embeddings' = False but the weights have no "
                          "lm_head.weight")


def read_hf_config(folder: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a HF folder's config.json; errors name the file (and the field)."""
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{folder}: not a HF checkpoint folder (no config.json)")
    try:
        hf_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{config_path}: invalid JSON: {e}") from None
    if not isinstance(hf_config, dict):
        raise ConfigError(f"{config_path}: expected a JSON object, got {type(hf_config).__name__}")
    try:
        return config_from_hf(hf_config)
    except ConfigError as e:
        raise ConfigError(f"{config_path}: {e}") from None


def read_hf_folder(folder: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(ModelConfig, banyan-named tensors) of a local HF Llama / GPT-2 folder, every refusal naming its field."""
    folder = Path(folder)
    cfg = read_hf_config(folder)
    sd = _read_weights(folder)
    check_tied_head(sd, cfg, str(folder))
    return cfg, state_dict_from_hf(sd, cfg)


def from_hf(path_or_model: str | os.PathLike | nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A banyan model from a transformers LlamaForCausalLM / GPT2LMHeadModel or a local checkpoint folder.

    The folder needs config.json plus safetensors (single or sharded) or pytorch_model.bin weights.
    Parameters are returned in `dtype` (fp32 by default, whatever the checkpoint stores), and the
    model in eval mode like HF's from_pretrained (call .train() to fine-tune with dropout).
    """
    from banyan.model import build_model

    if isinstance(path_or_model, (str, os.PathLike)):
        cfg, sd = read_hf_folder(path_or_model)
        where = str(path_or_model)
    else:
        where = type(path_or_model).__name__
        cfg = config_from_hf(path_or_model.config)
        sd = state_dict_from_hf(path_or_model.state_dict(), cfg)
    model = build_model(cfg)
    load_hf_state_dict(model, sd, where)
    return model.to(dtype).eval()


def to_hf(model: nn.Module, **config_overrides: Any):
    """A transformers LlamaForCausalLM / GPT2LMHeadModel (eval mode, same dtype) with `model`'s weights."""
    import transformers

    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    cfg = model.config
    hf_config = config_to_hf(cfg, **config_overrides)
    cls = transformers.LlamaForCausalLM if cfg.arch == "llama" else transformers.GPT2LMHeadModel
    hf = cls(hf_config).to(model.output_weight().dtype)
    missing, unexpected = hf.load_state_dict(state_dict_to_hf(model.state_dict(), cfg), strict=False)
    missing = [k for k in missing if not k.endswith(_HF_BUFFERS)]
    if missing or unexpected:
        raise ConfigError(f"to_hf: {cls.__name__} does not match banyan's weights: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    return hf.eval()
