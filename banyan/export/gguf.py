"""`banyan export gguf`: a Llama run or checkpoint as one GGUF file for llama.cpp, with the `gguf` package.

    banyan export gguf --src runs/big --out big.gguf [--dtype f16|q8_0|f32] [--overwrite]

What llama.cpp's convert_hf_to_gguf.py writes for a Llama with a byte-level BPE tokenizer:

* tensors under llama.cpp's names (gguf.TensorNameMap: token_embd, blk.N.attn_q, ..., output), a tied
  head left out (llama.cpp reuses token_embd); q/k rows permuted from HF's rotate-half RoPE layout
  (dim i pairs with i + hd/2) to the interleaved pairs (2i, 2i+1) ggml rotates; norms and rope
  factors stay f32, matrices take --dtype (q8_0 falls back to f16 for rows not a multiple of 32);
* hyper-parameters (context, width, blocks, MLP width, heads, KV heads, RoPE base and dimension, RMS eps)
  and, for llama3 RoPE scaling, the `rope_freqs` factors tensor;
* the tokenizer: model "gpt2" (byte-level BPE), tokens in id order with their types, merges, special
  ids, add_bos_token false and the chat template (gguf.SpecialVocab reads them from the same
  tokenizer.json / tokenizer_config.json the HF export writes). Pre-tokenizer "llama-bpe": Llama 3's
  split regex, which banyan's SPLIT_PATTERN (banyan.data.tokenizer) spells with possessive quantifiers
  and `\\s*[\\r\\n]` for `\\s*[\\r\\n]+`; both end a whitespace match at its last newline, so they split alike.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from banyan.config import parse_cli
from banyan.errors import ConfigError
from banyan.export.hf import hf_state_dict, special_tokens, write_tokenizer
from banyan.export.source import ExportConfig, Source, check_target, load_source, staged


@dataclass
class ExportGGUFConfig(ExportConfig):
    """Export a banyan Llama run or checkpoint as a GGUF file for llama.cpp."""

    dtype: Literal["f16", "q8_0", "f32"] = "f16"
    """Storage type of the weight matrices (norms stay f32)."""


def permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """[n_head*hd, d] rows per head from rotate-half order (i, i+hd/2) to interleaved pairs (2i, 2i+1),
    as llama.cpp's converter does for q_proj (n_head) and k_proj (n_kv_head)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_factors(cfg) -> torch.Tensor | None:
    """llama3 scaling as llama.cpp takes it: [hd/2] divisors of the base frequencies (None if unscaled)."""
    import dataclasses

    from banyan.model.llama import rope_inv_freq

    if cfg.rope_scaling != "llama3":
        return None
    base = rope_inv_freq(dataclasses.replace(cfg, rope_scaling="none"))
    return (base / rope_inv_freq(cfg)).float()  # llama.cpp divides each frequency by its factor


def _check(source: Source) -> None:
    from banyan.data.tokenizer import load_tokenizer

    cfg = source.cfg.model
    if cfg.arch != "llama":
        raise ConfigError(f"banyan export gguf writes Llama models; checkpoint {source.ckpt} is model.arch "
                          f"{cfg.arch!r} (export it with `banyan export hf`)")
    kind = load_tokenizer(source.tokenizer_file).kind
    if kind != "bpe":
        raise ConfigError(f"banyan export gguf needs a byte-level BPE tokenizer (llama.cpp's 'gpt2' vocabulary); "
                          f"{source.tokenizer_file} is {kind!r}")


def _tensor(writer, name: str, t: torch.Tensor, dtype: str) -> None:
    from gguf import GGMLQuantizationType, quants

    data = t.detach().float().numpy()
    if data.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, data.astype(np.float32))
    elif dtype == "q8_0" and data.shape[-1] % 32 == 0:
        writer.add_tensor(name, quants.quantize(data, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, data.astype(np.float16))


def gguf_tensors(source: Source) -> dict[str, torch.Tensor]:
    """llama.cpp name -> fp32 tensor (q/k permuted; tied head left out; rope_freqs when scaled)."""
    import gguf

    cfg = source.cfg.model
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.n_layer)
    out: dict[str, torch.Tensor] = {}
    for key, t in hf_state_dict(source.model, torch.float32).items():
        if key.endswith("self_attn.q_proj.weight"):
            t = permute_rope(t, cfg.n_head)
        elif key.endswith("self_attn.k_proj.weight"):
            t = permute_rope(t, cfg.n_kv_head)
        name = names.get_name(key, try_suffixes=(".weight",))
        if name is None:
            raise ConfigError(f"no llama.cpp name for tensor '{key}'")
        out[name] = t
    factors = rope_factors(cfg)
    if factors is not None:
        out[gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"] = factors
    return out


def _vocab(source: Source, writer, specials: dict) -> None:
    import gguf
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(source.tokenizer_file))
    vocab = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    special = {i for i, added in tok.get_added_tokens_decoder().items() if added.special}
    tokens, types = [], []
    for i in range(source.cfg.model.vocab_size):  # ids the model has but the tokenizer lacks: unused pads
        tokens.append(vocab.get(i, f"[PAD{i}]"))
        types.append(gguf.TokenType.UNUSED if i not in vocab else
                     gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:  # SpecialVocab reads HF files: write the ones export hf writes
        write_tokenizer(source, specials, Path(folder))
        gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)


def _hparams(source: Source, writer, dtype: str) -> None:
    import gguf

    cfg = source.cfg.model
    name = source.run_dir.name if source.run_dir else source.ckpt.name
    writer.add_name(name)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_kv_head)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    writer.add_file_type(ftype)


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def export_gguf(cfg: ExportGGUFConfig) -> Path:
    """Write the GGUF file for `cfg.src` at `cfg.out`; returns its path."""
    import gguf

    out = check_target(cfg)
    if out.is_dir():
        raise ConfigError(f"--out '{out}' is a folder; give a file name such as {out / 'model.gguf'}")
    if out.is_file() and _magic(out) != b"GGUF":  # --overwrite replaces only a GGUF file
        raise ConfigError(f"--out '{out}' is not a GGUF file (banyan did not write it); refusing to replace it")
    source = load_source(cfg.src)
    _check(source)
    specials = special_tokens(source)
    with staged(out, folder=False) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        _hparams(source, writer, cfg.dtype)
        _vocab(source, writer, specials)
        for name, t in gguf_tensors(source).items():
            _tensor(writer, name, t, cfg.dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out


def main(argv: list[str]) -> int:
    cfg = parse_cli(ExportGGUFConfig, argv, prog="banyan export gguf")
    t0 = time.perf_counter()
    out = export_gguf(cfg)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {cfg.dtype}) in {time.perf_counter() - t0:.1f}s")
    return 0
