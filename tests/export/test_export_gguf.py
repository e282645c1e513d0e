"""`banyan export gguf`: read the file back with gguf.GGUFReader and check every tensor and the metadata."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from banyan.cli import main as cli
from banyan.data.tokenizer import load_tokenizer
from banyan.export.gguf import ExportGGUFConfig, export_gguf, permute_rope
from banyan.model.llama import apply_rope, rope_cos_sin

sys.path.insert(0, str(Path(__file__).parent))
from exportkit import CHAT_TEMPLATE, make_tokenizer, save_single, tiny_model  # noqa: E402

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory):
    return make_tokenizer("bpe", tmp_path_factory.mktemp("tok") / "chat", chat=True)


def _read(path):
    reader = gguf.GGUFReader(str(path))
    fields = {name: f.contents() for name, f in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def _as_torch(t) -> torch.Tensor:
    data = gguf.quants.dequantize(t.data, t.tensor_type)
    return torch.from_numpy(np.array(data, dtype=np.float32)).reshape(tuple(reversed(t.shape.tolist())))


def _expected(model) -> dict[str, torch.Tensor]:
    """llama.cpp's name for every banyan weight, q/k rows permuted (the head only when untied)."""
    c, sd = model.config, model.state_dict()
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not c.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(c.n_layer):
        p = f"model.layers.{i}."
        out |= {f"blk.{i}.attn_norm.weight": sd[p + "input_layernorm.weight"],
                f"blk.{i}.attn_q.weight": permute_rope(sd[p + "self_attn.q_proj.weight"], c.n_head),
                f"blk.{i}.attn_k.weight": permute_rope(sd[p + "self_attn.k_proj.weight"], c.n_kv_head),
                f"blk.{i}.attn_v.weight": sd[p + "self_attn.v_proj.weight"],
                f"blk.{i}.attn_output.weight": sd[p + "self_attn.o_proj.weight"],
                f"blk.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
                f"blk.{i}.ffn_gate.weight": sd[p + "mlp.gate_proj.weight"],
                f"blk.{i}.ffn_up.weight": sd[p + "mlp.up_proj.weight"],
                f"blk.{i}.ffn_down.weight": sd[p + "mlp.down_proj.weight"]}
    return out


@pytest.mark.parametrize("dtype,tol", [("f32", 0.0), ("f16", 1e-3), ("q8_0", 2e-2)])
def test_every_tensor_reads_back_as_banyan_weights(tmp_path, chat_tok, dtype, tol):
    model = tiny_model("llama", load_tokenizer(chat_tok).vocab_size, tie=False, n_kv_head=2)
    save_single(tmp_path / "run", model, chat_tok)
    out = export_gguf(ExportGGUFConfig(src=str(tmp_path / "run"), out=str(tmp_path / "m.gguf"), dtype=dtype))
    _, tensors = _read(out)
    expected = _expected(model)
    assert set(tensors) == set(expected)
    for name, ref in expected.items():
        got = _as_torch(tensors[name])
        assert got.shape == ref.shape, name
        assert (got - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item()), name
        if ref.ndim == 1:
            assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32  # norms stay f32
    want = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[dtype]
    assert tensors["blk.0.ffn_up.weight"].tensor_type.name == want


def test_metadata_hparams_tokenizer_and_chat_template(tmp_path, chat_tok):
    tok = load_tokenizer(chat_tok)
    model = tiny_model("llama", tok.vocab_size, tie=True, n_kv_head=2)
    save_single(tmp_path / "run", model, chat_tok)
    fields, tensors = _read(export_gguf(ExportGGUFConfig(src=str(tmp_path / "run"), out=str(tmp_path / "m.gguf"))))
    c = model.config
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert fields["general.architecture"] == "llama"
    assert (fields["llama.block_count"], fields["llama.embedding_length"], fields["llama.feed_forward_length"],
            fields["llama.attention.head_count"], fields["llama.attention.head_count_kv"],
            fields["llama.context_length"], fields["llama.rope.dimension_count"]) == \
        (c.n_layer, c.d_model, c.d_ff, c.n_head, c.n_kv_head, c.max_seq_len, c.head_dim)
    assert fields["llama.rope.freq_base"] == pytest.approx(c.rope_theta)
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(c.norm_eps)
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "llama-bpe")
    vocab = {i: t for t, i in tok.hf.get_vocab(with_added_tokens=True).items()}
    assert fields["tokenizer.ggml.tokens"] == [vocab[i] for i in range(tok.vocab_size)]
    types = fields["tokenizer.ggml.token_type"]
    assert all(types[i] == gguf.TokenType.CONTROL for i in tok.special_ids.values())
    assert types[tok.vocab_size - 1] == gguf.TokenType.NORMAL
    merges = json.loads(tok.hf.to_str())["model"]["merges"]
    assert len(fields["tokenizer.ggml.merges"]) == len(merges) > 0
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"],
            fields["tokenizer.ggml.padding_token_id"]) == (tok.bos_id, tok.special_id("<|end|>"), tok.pad_id)
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == CHAT_TEMPLATE


def test_permutation_turns_rotate_half_rope_into_interleaved_pairs():
    """What the permutation is for: ggml rotates pairs (2i, 2i+1); HF/banyan rotate (i, i+hd/2). Rotating the
    permuted projection the ggml way must give the permuted result of rotating the original banyan's way."""
    model = tiny_model("llama", 300, tie=True, n_kv_head=2)
    c, hd = model.config, model.config.head_dim
    w = model.state_dict()["model.layers.0.self_attn.k_proj.weight"]  # [n_kv*hd, d]
    x = torch.randn(5, c.d_model, generator=torch.Generator().manual_seed(0))
    cos, sin = rope_cos_sin(c, 0, 5, x.device)  # [T, hd], halves repeated
    ours = apply_rope((x @ w.T).view(5, c.n_kv_head, hd).transpose(0, 1), cos, sin)  # [H, T, hd]
    y = (x @ permute_rope(w, c.n_kv_head).T).view(5, c.n_kv_head, hd // 2, 2).transpose(0, 1)  # [H, T, hd/2, 2]
    c_, s_ = cos[:, : hd // 2], sin[:, : hd // 2]
    ggml = torch.stack([y[..., 0] * c_ - y[..., 1] * s_, y[..., 0] * s_ + y[..., 1] * c_], dim=-1)
    # interleaved pair i of head h holds dims (i, i + hd/2) of the rotate-half layout
    ours_pairs = torch.stack([ours[..., : hd // 2], ours[..., hd // 2:]], dim=-1)
    assert torch.allclose(ggml, ours_pairs, atol=1e-6)


def test_llama3_scaling_writes_rope_factors(tmp_path, chat_tok):
    from banyan.export.gguf import rope_factors

    model = tiny_model("llama", load_tokenizer(chat_tok).vocab_size, tie=True)
    model.config.rope_scaling, model.config.rope_original_max_seq_len = "llama3", 16
    save_single(tmp_path / "run", model, chat_tok)
    _, tensors = _read(export_gguf(ExportGGUFConfig(src=str(tmp_path / "run"), out=str(tmp_path / "m.gguf"))))
    factors = _as_torch(tensors["rope_freqs.weight"])
    assert torch.equal(factors, rope_factors(model.config))
    # llama.cpp's converter: 1 for short wavelengths, `factor` for long ones, smoothed in between
    c = model.config
    hi, lo = c.rope_original_max_seq_len / c.rope_high_freq_factor, c.rope_original_max_seq_len / c.rope_low_freq_factor
    want = []
    for i in range(0, c.head_dim, 2):
        wavelen = 2 * math.pi * c.rope_theta ** (i / c.head_dim)
        smooth = (c.rope_original_max_seq_len / wavelen - c.rope_low_freq_factor) / (
            c.rope_high_freq_factor - c.rope_low_freq_factor)
        scaled = 1 / ((1 - smooth) / c.rope_factor + smooth)
        want.append(1.0 if wavelen < hi else c.rope_factor if wavelen > lo else scaled)
    assert torch.allclose(factors, torch.tensor(want), rtol=1e-5)
    assert len(set(want)) > 1 and want[-1] == c.rope_factor  # the test case spans the scaled range


def test_refusals_are_exit_2_and_write_nothing(tmp_path, chat_tok, capsys):
    tok_file = make_tokenizer("char", tmp_path / "char")
    save_single(tmp_path / "gpt2", tiny_model("gpt2", load_tokenizer(chat_tok).vocab_size, True), chat_tok)
    save_single(tmp_path / "char_run", tiny_model("llama", load_tokenizer(tok_file).vocab_size, True), tok_file)
    for src, message in (("gpt2", "writes Llama models"), ("char_run", "byte-level BPE")):
        rc = cli(["export", "gguf", "--src", str(tmp_path / src), "--out", str(tmp_path / "m.gguf")])
        assert rc == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # tyro rejects a dtype outside the choices, naming them
        cli(["export", "gguf", "--src", str(tmp_path / "gpt2"), "--out", str(tmp_path / "m.gguf"), "--dtype", "q4_k"])
    assert exc.value.code == 2 and "q8_0" in capsys.readouterr().err
    assert not any(n.endswith(".gguf") or ".tmp" in n for n in os.listdir(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_llama_cpp_reads_the_file_like_banyan(tmp_path, chat_tok, dtype):
    """llama.cpp itself (llama-cpp-python, built from its source release) loads the export: its tokenizer
    splits text into banyan's ids, and its next-token logits match banyan's (f16: max abs diff <= 1e-2;
    q8_0: the same top-1 token on >= 95% of positions)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    tok = load_tokenizer(chat_tok)
    model = tiny_model("llama", tok.vocab_size, tie=False, n_kv_head=2)
    save_single(tmp_path / "run", model, chat_tok)
    path = export_gguf(ExportGGUFConfig(src=str(tmp_path / "run"), out=str(tmp_path / "m.gguf"), dtype=dtype))
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=64, n_threads=2, verbose=False)
    worst, agree, total = 0.0, 0, 0
    for text in ("To be, or not to be, that is the question", "ROMEO: What light through yonder window?",
                 "  spaces, 123 numbers and\nnew lines"):
        ids = tok.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, text
        llm.reset()
        llm.eval(ids)
        theirs = np.array(llm.scores[:len(ids)], dtype=np.float32)
        with torch.no_grad():
            ours = model(torch.tensor([ids]))[0].float().numpy()
        worst = max(worst, float(np.abs(ours - theirs).max()))
        agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        total += len(ids)
    print(f"llama.cpp {dtype}: max |logit diff| {worst:.2e}, top-1 agreement {agree}/{total}")
    if dtype == "f16":
        assert worst <= 1e-2
    else:
        assert agree / total >= 0.95
