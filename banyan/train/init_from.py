"""`--init SOURCE`: start a run from trained weights (fine-tuning), not from a random init.

A source is a banyan run folder (its latest complete checkpoint) or a checkpoint folder, written
by one process (safetensors) or many (DCP). The architecture is the source's: its saved model
config replaces the run's (keeping the run's dropout), so nobody retypes the shape of the model
they fine-tune. The weights load straight into the parallelized model (a zero3 rank reads only
its shards); the optimizer, step and RNG start fresh.

`hf:DIR` names a local Hugging Face Llama / GPT-2 folder (config.json, safetensors weights, single or
sharded, tokenizer.json and tokenizer_config.json): the architecture comes from config.json
(banyan.model.hf.config_from_hf, which refuses what banyan would compute differently, naming the
field). Its tokenizer.json goes through banyan.data.tokenizer, which appends banyan's reserved
special tokens when missing; the model is then built with that larger vocabulary and the HF
embedding/head grow to it (banyan.model.resize, on the CPU copy, before the weights reach the
parallelized model through the same full-state-dict path as single-process checkpoints).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from banyan.config import RunConfig, read_saved_config
from banyan.errors import CheckpointError, ConfigError
from banyan.train import checkpoint as ckpt

HF_PREFIX = "hf:"


def is_hf_folder(path: Path) -> bool:
    """An HF model folder (config.json), not a banyan checkpoint (trainer.json + config.toml)."""
    return (path / "config.json").is_file() and not (path / "trainer.json").is_file()


def hf_folder(spec: str) -> Path:
    """The folder `--init hf:DIR` names, refused unless it holds a config.json."""
    path = Path(spec[len(HF_PREFIX):])
    if not path.is_dir():
        raise CheckpointError(f"--init {spec}: no such folder (expected a Hugging Face model folder)")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"--init {spec}: not a Hugging Face model folder (no config.json)")
    return path


def hf_vocab_size(folder: Path, model_vocab: int) -> int:
    """Rows the model needs: the HF vocabulary, grown to banyan's tokenizer of the folder (reserved specials)."""
    if not (folder / "tokenizer.json").is_file():
        return model_vocab
    from banyan.data.tokenizer import load_tokenizer

    return max(model_vocab, load_tokenizer(folder / "tokenizer.json").vocab_size)


def init_checkpoint(spec: str) -> Path:
    """The checkpoint folder `spec` names (a run folder resolves to its latest checkpoint)."""
    if spec.startswith(HF_PREFIX):
        return hf_folder(spec)
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"--init {spec}: no such folder (expected a banyan run or checkpoint folder)")
    if is_hf_folder(path):
        raise CheckpointError(f"--init {spec}: this is a Hugging Face model folder; write --init {HF_PREFIX}{spec}")
    ck = ckpt.resolve_checkpoint(path)
    if not (ck / "config.toml").is_file():
        raise CheckpointError(f"--init {spec}: checkpoint {ck} has no config.toml")
    return ck


def apply_init_model(cfg: RunConfig) -> Path | None:
    """Replace cfg.model by the --init source's architecture; returns the checkpoint folder (None: no init)."""
    if not cfg.init:
        return None
    ck = init_checkpoint(cfg.init)
    if is_hf_folder(ck):
        from banyan.model.hf import read_hf_config

        try:
            saved = read_hf_config(ck)
        except ConfigError as e:
            raise ConfigError(f"--init {cfg.init}: {e}") from None
        saved.vocab_size = hf_vocab_size(ck, saved.vocab_size)
    else:
        saved = read_saved_config(RunConfig, ck / "config.toml").model
    cfg.model = dataclasses.replace(saved, dropout=cfg.model.dropout).finalize()
    return ck


def init_tokenizer_files(ck: Path) -> list[Path]:
    """tokenizer.json (and tokenizer_config.json with the chat template, when present) of a checkpoint
    or an HF folder (whose tokenizer.json banyan.data.tokenizer completes with the reserved specials)."""
    return [p for p in (ck / "tokenizer.json", ck / "tokenizer_config.json") if p.is_file()]


def load_init_weights(ck: Path, par, cfg: RunConfig, env) -> None:
    """Weights of checkpoint `ck` into the (possibly sharded) model; no optimizer, no RNG."""
    from banyan.train import dist_checkpoint as dist_ckpt
    from banyan.train.lora_run import check_init_source

    if is_hf_folder(ck):
        weights = dict(hf_model(ck).state_dict())  # the rows cfg.model.vocab_size counted in apply_init_model
        dist_ckpt.load_full_weights(par.raw, weights, f"--init {HF_PREFIX}{ck}", ck)  # under LoRA: the base
        return
    check_init_source(ck)
    dist_ckpt.load(ck, par, None, cfg, env, restore_rng=False)


def hf_model(folder: Path):
    """The HF folder as a banyan model (CPU, fp32, eval), embedding/head grown to hf_vocab_size rows."""
    from banyan.model.hf import from_hf
    from banyan.model.resize import resize_token_embeddings

    model = from_hf(folder)
    return resize_token_embeddings(model, hf_vocab_size(folder, model.config.vocab_size)).eval()


def check_init_tokenizer(spec: str, tok, where: str) -> None:
    """Refuse data tokenized by another tokenizer than the --init source's: its ids would mean other tokens."""
    if not spec:
        return
    files = init_tokenizer_files(init_checkpoint(spec))
    if not files or files[0].name != "tokenizer.json":
        return  # the source has no tokenizer: nothing to compare with
    from banyan.data.tokenizer import load_tokenizer

    source = load_tokenizer(files[0]).hf.get_vocab(with_added_tokens=True)
    if source != tok.hf.get_vocab(with_added_tokens=True):
        raise ConfigError(f"{where} was tokenized with another tokenizer than --init {spec} "
                          f"({tok.vocab_size} vs {len(source)} ids); prepare the data with "
                          f"`banyan data prepare --tokenizer {files[0]}`")
