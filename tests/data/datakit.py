"""Helpers for data tests: deterministic small corpora and hand-made prepared folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from banyan.data.shards import write_shard

WORDS = ("the king queen lord speak hear thee thou art night day love death sword crown ROMEO JULIET "
         "naïve café Ærø 東京 🎉 — « » don't I'll 1599 42").split()
TRICKY = [
    "Hello  world\n\n\tx",                       # multiple spaces, blank line, tab
    "trailing spaces   \n   leading",
    "emoji 🎉🚀 and CJK 東京 and combining é vs é",
    "windows\r\nline\rends\x00nul\x7f",
    "literal specials <|eos|><|bos|> stay text",
    "   ",
    "",
    "a" * 300 + "\n" * 5,
]


def make_text(n_words: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    words = rng.choice(WORDS, size=n_words)
    lines, line = [], []
    for i, w in enumerate(words):
        line.append(str(w))
        if rng.random() < 0.12 or i == n_words - 1:
            lines.append(" ".join(line) + ("," if rng.random() < 0.3 else "."))
            line = []
    return "\n".join(lines) + "\n"


def write_corpus(folder: Path, n_docs: int = 12, words: int = 200, seed: int = 0) -> list[str]:
    """n_docs .txt files (some in a subfolder); returns the documents in sorted-path order."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub").mkdir(exist_ok=True)
    docs = {}
    for i in range(n_docs):
        rel = f"sub/doc{i:02d}.md" if i % 4 == 3 else f"doc{i:02d}.txt"
        docs[rel] = make_text(words, seed * 1000 + i)
        (folder / rel).write_text(docs[rel], encoding="utf-8")
    (folder / "ignored.csv").write_text("not,a,document\n")
    return [docs[k] for k in sorted(docs)]


def write_fake_prepared(folder: Path, splits: dict[str, list[np.ndarray]], vocab_size: int) -> Path:
    """A prepared folder from raw token arrays (no tokenizer.json): for loader-only tests."""
    folder.mkdir(parents=True, exist_ok=True)
    meta_splits = {}
    for name, arrays in splits.items():
        files = []
        for i, arr in enumerate(arrays):
            fname = f"{name}_{i:06d}.bin"
            write_shard(folder / fname, arr, vocab_size)
            files.append(fname)
        n = int(sum(a.size for a in arrays))
        meta_splits[name] = {"docs": len(arrays), "tokens": n, "bytes": 2 * n, "shards": files}
    meta = {"format": "banyan-token-shards", "format_version": 1, "vocab_size": vocab_size,
            "splits": meta_splits}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def decode_split(folder: Path, split: str) -> list[str]:
    """Documents of a prepared split, recovered by decoding its shards and cutting at EOS."""
    from banyan.data.loader import read_meta
    from banyan.data.shards import open_shard
    from banyan.data.tokenizer import load_tokenizer

    meta = read_meta(folder)
    tok = load_tokenizer(folder)
    ids = np.concatenate([np.asarray(open_shard(folder / f)) for f in meta["splits"][split]["shards"]])
    assert ids[-1] == tok.eos_id, "every split ends with an EOS"
    cuts = np.flatnonzero(ids == tok.eos_id)
    docs, lo = [], 0
    for c in cuts:
        docs.append(tok.decode(ids[lo:c].tolist()))
        lo = c + 1
    return docs
