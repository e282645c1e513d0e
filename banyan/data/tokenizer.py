"""Tokenizers: byte-level BPE and character-level, both as a Hugging Face `tokenizers.Tokenizer`.

One `Tokenizer` class wraps either kind, so save/load is always a single `tokenizer.json`.

* ``bpe:N``  byte-level BPE (GPT-2 byte alphabet, GPT-4 style pre-tokenizer regex) trained to N ids.
  Every byte is in the base alphabet, so any UTF-8 text round-trips exactly.
* ``char``   one id per character seen in training, plus 256 byte-fallback ids (``<0x00>``..``<0xFF>``)
  for characters never seen, so it round-trips any text too (a BPE model with no merges).

Both reserve the same special tokens at ids 0..6 (pretraining uses ``<|eos|>``; the chat tokens are
reserved now so supervised fine-tuning never changes the vocabulary). Raw text never turns into a
special token: a document containing the string "<|eos|>" is encoded as ordinary characters.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from banyan.data import DataError
from banyan.io import atomic_write_text

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>")
# GPT-4 (cl100k) style split, written as a fact from its published regex: contractions, letter runs
# with one leading non-letter, numbers of 1-3 digits, punctuation runs, newlines, other whitespace.
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
SPEC_HELP = "bpe:N (byte-level BPE with N ids, e.g. bpe:2048), char, or a path to a tokenizer.json / prepared data folder"
MIN_BPE_VOCAB = len(SPECIAL_TOKENS) + 256 + 1


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable-char table (Radford et al. 2019, `bytes_to_unicode`).

    Printable Latin-1 bytes map to themselves; the 68 others (controls, space, 0x7F-0xA0, 0xAD)
    map, in byte order, to chr(256), chr(257), ... so every byte has a visible one-char stand-in.
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class Tokenizer:
    """A trained HF tokenizer plus the ids and byte lengths the rest of banyan needs."""

    def __init__(self, hf, kind: str | None = None):
        missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
        if missing:  # e.g. a foreign tokenizer.json: reserve ours after its vocabulary
            hf.add_special_tokens(missing)
        # Not persisted in tokenizer.json, so set on every construction: text stays text.
        hf.encode_special_tokens = True
        self.hf = hf
        self.kind = kind or _detect_kind(hf)
        self._token_bytes: np.ndarray | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def train_bpe(cls, docs: Iterable[str], vocab_size: int, min_frequency: int = 2) -> "Tokenizer":
        """Byte-level BPE trained on `docs` to at most `vocab_size` ids (fewer if the text runs out of pairs)."""
        from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
        from tokenizers import Tokenizer as HFTokenizer

        if vocab_size < MIN_BPE_VOCAB:
            raise DataError(f"bpe vocab size must be at least {MIN_BPE_VOCAB} "
                            f"({len(SPECIAL_TOKENS)} special + 256 bytes + 1 merge), got {vocab_size}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(docs, trainer)
        return cls(hf, kind="bpe")

    @classmethod
    def train_char(cls, docs: Iterable[str]) -> "Tokenizer":
        """Character vocabulary of `docs` (sorted), after the specials and 256 byte-fallback ids."""
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        chars: set[str] = set()
        for doc in docs:
            chars.update(doc)
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = len(vocab)
        for ch in sorted(chars):
            vocab.setdefault(ch, len(vocab))
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
        # Any split is lossless for a merge-free model; splitting at whitespace keeps "words" short.
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s"), behavior="isolated")
        hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
        hf.add_special_tokens(list(SPECIAL_TOKENS))
        return cls(hf, kind="char")

    @classmethod
    def from_str(cls, text: str, where: str = "tokenizer.json") -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        try:
            hf = HFTokenizer.from_str(text)
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception on bad JSON
            raise DataError(f"{where}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
        return cls(hf)

    def to_str(self) -> str:
        return self.hf.to_str()

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # `_fast` skips offset tracking, which we never use.
        return [e.ids for e in self.hf.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    # ------------------------------------------------------------------ ids
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def special_id(self, token: str) -> int:
        if token not in SPECIAL_TOKENS:
            raise KeyError(f"{token!r} is not a special token; specials: {', '.join(SPECIAL_TOKENS)}")
        return int(self.hf.token_to_id(token))

    @property
    def bos_id(self) -> int:
        return self.special_id("<|bos|>")

    @property
    def eos_id(self) -> int:
        return self.special_id("<|eos|>")

    @property
    def pad_id(self) -> int:
        return self.special_id("<|pad|>")

    @property
    def special_ids(self) -> dict[str, int]:
        return {t: self.special_id(t) for t in SPECIAL_TOKENS}

    def token_bytes(self) -> np.ndarray:
        """int64 [vocab_size]: UTF-8 bytes each id stands for (0 for specials), for bits-per-byte.

        Byte-level BPE tokens are strings over GPT-2's byte alphabet: one char = one byte, mapped
        back through the table. Char tokens are their UTF-8 length; `<0xNN>` fallback ids are 1 byte.
        """
        if self._token_bytes is None:
            out = np.zeros(self.vocab_size, dtype=np.int64)
            special = set(self.special_ids.values())
            inverse = {c: b for b, c in byte_level_alphabet().items()}
            for tok, i in self.hf.get_vocab(with_added_tokens=True).items():
                if i in special:
                    continue
                if self.kind == "bpe":
                    try:
                        out[i] = len(bytes(inverse[c] for c in tok))
                    except KeyError:
                        raise DataError(f"token {i} {tok!r} is not over the byte-level alphabet") from None
                elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                    out[i] = 1
                else:
                    out[i] = len(tok.encode("utf-8"))
            self._token_bytes = out
        return self._token_bytes

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write `directory/tokenizer.json` atomically; returns its path."""
        directory = Path(directory)
        return atomic_write_text(Path(directory) / "tokenizer.json", self.to_str())

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _detect_kind(hf) -> str:
    decoder = json.loads(hf.to_str()).get("decoder") or {}
    types = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders") or []]
    if "ByteLevel" in types:
        return "bpe"
    if "ByteFallback" in types and "Metaspace" not in types and "Replace" not in types:
        return "char"
    raise DataError(f"unsupported tokenizer (decoder {types}); banyan handles byte-level BPE and "
                    "byte-fallback character tokenizers")


def parse_spec(spec: str) -> tuple[str, int | Path | None]:
    """`bpe:N` -> ("bpe", N); `char` -> ("char", None); existing path -> ("file", tokenizer.json)."""
    spec = spec.strip()
    if spec.startswith("bpe:"):
        try:
            n = int(spec[4:])
        except ValueError:
            raise DataError(f"tokenizer spec '{spec}': vocab size must be an integer; valid: {SPEC_HELP}") from None
        if n < MIN_BPE_VOCAB:
            raise DataError(f"tokenizer spec '{spec}': vocab size must be at least {MIN_BPE_VOCAB}")
        return "bpe", n
    if spec == "char":
        return "char", None
    path = Path(spec).expanduser()
    if spec and path.exists():
        return "file", tokenizer_path(path)
    raise DataError(f"unknown tokenizer spec '{spec}'; valid: {SPEC_HELP}")


def tokenizer_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        hint = f"; run `banyan data prepare --out {path}`" if path.is_dir() or not path.exists() else ""
        raise DataError(f"tokenizer not found: {file}{hint}")
    return file


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a `tokenizer.json`, or the one inside a prepared data folder."""
    file = tokenizer_path(path)
    return Tokenizer.from_str(file.read_text(encoding="utf-8"), where=str(file))


def build_tokenizer(spec: str, docs: Iterable[str]) -> Tokenizer:
    """Train (`bpe:N`, `char`) on `docs`, or load an existing tokenizer (then `docs` is not read)."""
    kind, arg = parse_spec(spec)
    if kind == "bpe":
        return Tokenizer.train_bpe(docs, int(arg))
    if kind == "char":
        return Tokenizer.train_char(docs)
    return load_tokenizer(arg)
