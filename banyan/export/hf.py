"""`banyan export hf`: a run or checkpoint as a Hugging Face model folder that transformers loads offline.

    banyan export hf --src runs/shakespeare --out hf/shakespeare [--dtype bf16] [--overwrite]

OUT/ holds config.json (LlamaForCausalLM or GPT2LMHeadModel), model.safetensors (or shards
model-0000i-of-0000n.safetensors + model.safetensors.index.json above --max_shard_size), with a tied
head stored once under the embedding's name as transformers saves it, generation_config.json,
tokenizer.json + tokenizer_config.json (the checkpoint's own, with its chat template, completed with
the fields AutoTokenizer needs) and a README.md model card. Everything is written into a temp
folder beside OUT and renamed into place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from banyan.config import parse_cli
from banyan.errors import ConfigError
from banyan.export.card import model_card
from banyan.export.source import ExportConfig, Source, check_target, load_source, staged
from banyan.train.checkpoint import TOKENIZER_CONFIG

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# HF class per banyan architecture; the head weight that a tied checkpoint leaves out
ARCHITECTURES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}
TIED_HEAD = "lm_head.weight"


@dataclass
class ExportHFConfig(ExportConfig):
    """Export a banyan run or checkpoint as a Hugging Face transformers model folder."""

    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """dtype of the exported weights (fp32 keeps them exactly)."""
    max_shard_size: str = "5GB"
    """Split model.safetensors into shards (with model.safetensors.index.json) above this size, e.g. 5GB, 500MB."""
    license: str = "other"
    """License id for the model card's front matter (e.g. apache-2.0, mit, other)."""


def special_tokens(source: Source) -> dict[str, Any]:
    """{bos,eos,pad}_token(_id) from the checkpoint's tokenizer_config.json when it names them, else banyan's
    reserved <|bos|> <|eos|> <|pad|>; plus the chat template and the generation eos ids."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(source.tokenizer_file))
    given = source.tokenizer_config or {}
    out: dict[str, Any] = {}
    for role, default in (("bos", "<|bos|>"), ("eos", "<|eos|>"), ("pad", "<|pad|>")):
        value = given.get(f"{role}_token") or default
        content = value.get("content") if isinstance(value, dict) else value  # AddedToken form
        token_id = tok.token_to_id(str(content))
        if token_id is None:
            raise ConfigError(f"{source.ckpt / TOKENIZER_CONFIG}: {role}_token {content!r} is not in tokenizer.json")
        out[f"{role}_token"], out[f"{role}_token_id"] = content, token_id
    out["chat_template"] = given.get("chat_template")
    # a chat model ends its turn with <|end|>; plain text ends with <|eos|>: generation stops at either
    ends = ["<|end|>", "<|eos|>"] if out["chat_template"] else [out["eos_token"]]
    ids = [tok.token_to_id(t) for t in ends]
    out["generation_eos"] = [i for k, i in enumerate(ids) if i is not None and i not in ids[:k]]
    return out


def tokenizer_config(source: Source, specials: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's tokenizer_config.json (kept as written) completed with what AutoTokenizer needs."""
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": specials["bos_token"], "eos_token": specials["eos_token"], "pad_token": specials["pad_token"],
        "model_max_length": source.cfg.model.max_seq_len,
        "clean_up_tokenization_spaces": False,  # decode must give back the text exactly, as banyan's does
        "add_bos_token": False,  # banyan never prepends <|bos|> when encoding text
    }
    cfg.update(source.tokenizer_config or {})
    return cfg


def write_tokenizer(source: Source, specials: dict[str, Any], folder: Path) -> None:
    """tokenizer.json (copied as trained) and the completed tokenizer_config.json into `folder`."""
    shutil.copy2(source.tokenizer_file, folder / "tokenizer.json")
    text = json.dumps(tokenizer_config(source, specials), indent=2, ensure_ascii=False) + "\n"
    (folder / TOKENIZER_CONFIG).write_text(text, encoding="utf-8")


def hf_state_dict(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """HF-named tensors in `dtype`; a tied head is dropped (stored once, under the embedding's name)."""
    from banyan.model.hf import state_dict_to_hf

    cfg = model.config
    sd = state_dict_to_hf(model.state_dict(), cfg)
    if cfg.tie_embeddings:
        sd.pop(TIED_HEAD, None)
    return {k: v.detach().to(dtype).contiguous() for k, v in sd.items()}


def write_weights(sd: dict[str, torch.Tensor], folder: Path, max_shard_size: str) -> list[str]:
    """model.safetensors, or shards + model.safetensors.index.json above `max_shard_size`; returns the files."""
    from huggingface_hub import save_torch_state_dict

    try:
        save_torch_state_dict(sd, folder, max_shard_size=max_shard_size, metadata={"format": "pt"})
    except ValueError as e:  # an unparsable size, e.g. "5 gigs"
        raise ConfigError(f"--max_shard_size {max_shard_size!r}: {e}") from None
    return sorted(p.name for p in folder.glob("model*.safetensors*"))


def write_configs(source: Source, specials: dict[str, Any], dtype: torch.dtype, folder: Path) -> None:
    """config.json (architectures, dtype, special ids) and generation_config.json."""
    from transformers import GenerationConfig

    from banyan.model.hf import config_to_hf

    cfg = source.cfg.model
    ids = {f"{r}_token_id": specials[f"{r}_token_id"] for r in ("bos", "eos", "pad")}
    hf_config = config_to_hf(cfg, architectures=[ARCHITECTURES[cfg.arch]], **ids)
    hf_config.dtype = dtype
    hf_config.save_pretrained(folder)
    eos = specials["generation_eos"]
    gen = GenerationConfig(bos_token_id=ids["bos_token_id"], pad_token_id=ids["pad_token_id"],
                           eos_token_id=eos[0] if len(eos) == 1 else eos)
    gen.save_pretrained(folder)


def export_hf(cfg: ExportHFConfig) -> Path:
    """Write the HF folder for `cfg.src` at `cfg.out`; returns its path."""
    out = check_target(cfg)
    source = load_source(cfg.src)
    specials = special_tokens(source)
    dtype = DTYPES[cfg.dtype]
    with staged(out) as tmp:
        write_weights(hf_state_dict(source.model, dtype), tmp, cfg.max_shard_size)
        write_configs(source, specials, dtype, tmp)
        write_tokenizer(source, specials, tmp)
        (tmp / "README.md").write_text(model_card(source, cfg.license, cfg.dtype), encoding="utf-8")
    return out


def main(argv: list[str]) -> int:
    cfg = parse_cli(ExportHFConfig, argv, prog="banyan export hf")
    t0 = time.perf_counter()
    out = export_hf(cfg)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB, {cfg.dtype}) in {time.perf_counter() - t0:.1f}s; "
          f"load with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0
