"""`banyan data prepare`: text source -> tokenizer -> train/val token shards + meta.json.

Output folder layout::

    tokenizer.json          HF tokenizers file (load with banyan.data.tokenizer.load_tokenizer)
    tokenizer_config.json   HF tokenizer config with the chat template (banyan.data.chat_template);
                            checkpoints copy it next to their tokenizer.json
    train_000000.bin ...    token shards (banyan.data.shards), each at most `shard_tokens` ids
    val_000000.bin ...
    meta.json               tokenizer spec/ids, dtype, per-split docs/tokens/bytes/shards, source, timing
    manifest.json           sizes and SHA-256 of all of the above (banyan.manifest), written last

Token layout: every document's tokens followed by one ``<|eos|>``; no ``<|bos|>`` (the previous
document's EOS already marks the boundary, and a random window then never wastes a position).
Train/val is split by document with a hash of (seed, document index), so the split is a pure
function of the seed and the source order; if the draw leaves a split empty, the last document of
the other split moves over. Everything is written into a temporary sibling folder whose files move
into `out` only after meta.json and manifest.json are complete, so an interrupted run never leaves a
folder that looks done; what `out` may hold and when it is replaced: banyan.data.folder.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from banyan.data import DataError
from banyan.data.chat_template import write_tokenizer_config
from banyan.data.shards import ShardWriter
from banyan.data.sources import SourceStats, describe, iter_documents
from banyan.data.tokenizer import Tokenizer, build_tokenizer, parse_spec
from banyan.data.folder import check_out, check_source_apart
from banyan.data.prepare_meta import build_meta, print_summary
from banyan.io import FolderLock, atomic_write_json, is_no_space, remove_stale_temps
from banyan.manifest import replace_contents, write_manifest



@dataclass
class PrepareConfig:
    """Tokenize a corpus (default: the embedded Shakespeare plays) into train/val token shards."""

    source: str = ""
    """Text source: empty = embedded Shakespeare; a .txt/.md/.jsonl/.parquet file or folder; or hf:NAME."""
    out: str = "data/shakespeare"
    """Output folder (tokenizer.json, meta.json, train_*.bin, val_*.bin, manifest.json); not the source, and
    holding nothing banyan did not write."""
    overwrite: bool = False
    """Replace a prepared set already in --out (only the files its manifest lists are removed)."""
    tokenizer: str = "bpe:4096"
    """bpe:N (byte-level BPE with N ids), char, or a tokenizer.json / prepared data folder to reuse."""
    text_field: str = "text"
    """Field holding the text in jsonl records, parquet columns and HF examples."""
    hf_config: str = ""
    """hf: sources: dataset configuration name (e.g. sample-10BT)."""
    hf_split: str = "train"
    """hf: sources: split to stream."""
    hf_data_files: str = ""
    """hf: sources: data files (path, glob or comma list); required for hf:parquet / hf:json / hf:text."""
    max_docs: int = 0
    """Stop after this many documents (0: no cap)."""
    max_bytes: int = 0
    """Stop after this many bytes of UTF-8 text (0: no cap); the cap for streaming sources."""
    tokenizer_train_bytes: int = 1_000_000_000
    """Train a bpe/char tokenizer on at most this many bytes of the train split."""
    val_fraction: float = 0.05
    """Fraction of documents held out for validation (at least one document)."""
    workers: int = 0
    """Tokenization processes (0: os.cpu_count(); 1: in this process)."""
    skip_invalid: bool = False
    """Skip (and count) jsonl lines / rows without a string text field instead of stopping."""
    seed: int = 1337
    """Seed of the train/val document split."""
    shard_tokens: int = 100_000_000
    """Tokens per shard file."""
    progress: bool = True
    """Show a progress bar."""


# ----------------------------------------------------------------------------- split
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer (Steele, Lea & Flood 2014) on uint64 arrays; numpy wraps on overflow."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def val_mask(seed: int, start: int, n: int, fraction: float) -> np.ndarray:
    """bool [n]: is document `start + i` in the val split? A pure function of (seed, index)."""
    key = _splitmix64(np.array([seed % (1 << 64)], dtype=np.uint64))
    h = _splitmix64(np.arange(start, start + n, dtype=np.uint64) ^ key)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


# ----------------------------------------------------------------------------- tokenization workers
_WORKER_TOK: Tokenizer | None = None
MAX_PIECE_CHARS = 1 << 20


def _init_worker(tokenizer_json: str) -> None:
    global _WORKER_TOK
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the pool is the parallelism; avoid oversubscription
    _WORKER_TOK = Tokenizer.from_str(tokenizer_json)


def _pieces(doc: str, limit: int = MAX_PIECE_CHARS, tok: Tokenizer | None = None) -> list[str]:
    """Cut a huge document into <= `limit`-char pieces whose tokens, concatenated, equal the whole's.

    First choice: a newline followed by non-space (neither pre-tokenizer joins the two). A stretch
    without one (a 5 MB one-line document) is cut where the window's last pre-token starts: BPE
    merges never cross pre-tokens, and a left-to-right pre-tokenizer's spans before the last are
    final (only the span touching the window's end can change when the text goes on).
    """
    if len(doc) <= limit:
        return [doc]
    out, lo = [], 0
    while len(doc) - lo > limit:
        cut = doc.rfind("\n", lo, lo + limit)
        while cut > lo and doc[cut + 1].isspace():
            cut = doc.rfind("\n", lo, cut)
        hi = cut + 1 if cut > lo else _pre_token_cut(doc, lo, limit, tok)
        out.append(doc[lo:hi])
        lo = hi
    out.append(doc[lo:])
    return out


def _pre_token_cut(doc: str, lo: int, limit: int, tok: Tokenizer | None) -> int:
    """Where the last pre-token of doc[lo:lo+limit] starts (lo + limit without a tokenizer or a split)."""
    pre = getattr(getattr(tok, "hf", None), "pre_tokenizer", None)
    if pre is not None:
        spans = pre.pre_tokenize_str(doc[lo:lo + limit])
        if len(spans) >= 2 and spans[-1][1][0] > 0:
            return lo + spans[-1][1][0]
    return lo + limit


def encode_documents(tok: Tokenizer, docs: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (tokens uint32 [sum(lengths)], lengths int64 [n_docs] incl. EOS, utf-8 bytes int64 [n_docs])."""
    pieces, owner = [], []
    for i, doc in enumerate(docs):
        for p in _pieces(doc, tok=tok):
            pieces.append(p)
            owner.append(i)
    encoded = tok.encode_batch(pieces)
    lengths = np.ones(len(docs), dtype=np.int64)  # the EOS
    np.add.at(lengths, np.asarray(owner, dtype=np.int64), [len(ids) for ids in encoded])
    eos = np.array([tok.eos_id], dtype=np.uint32)
    parts: list[np.ndarray] = []
    for j, ids in enumerate(encoded):
        parts.append(np.array(ids, dtype=np.uint32))
        if j + 1 == len(encoded) or owner[j + 1] != owner[j]:
            parts.append(eos)
    nbytes = np.array([len(d.encode("utf-8")) for d in docs], dtype=np.int64)
    return np.concatenate(parts), lengths, nbytes


def _encode_chunk(docs: list[str]):
    assert _WORKER_TOK is not None, "worker not initialised"
    return encode_documents(_WORKER_TOK, docs)


def _chunks(docs: Iterator[str], max_docs: int = 512, max_chars: int = 1 << 18) -> Iterator[list[str]]:
    chunk, size = [], 0
    for d in docs:
        chunk.append(d)
        size += len(d)
        if len(chunk) >= max_docs or size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _encoded_chunks(tok: Tokenizer, chunks: Iterator[list[str]], workers: int):
    """Yield (docs, encode_documents(docs)) in order; at most 2*workers chunks in flight (bounded memory)."""
    if workers <= 1:
        for docs in chunks:
            yield docs, encode_documents(tok, docs)
        return
    import multiprocessing as mp

    # fork on Linux: workers start at once and a caller's script without a __main__ guard is not
    # re-run (spawn would re-import it). HF tokenizers must not use its thread pool in a forked child;
    # the variable (inherited by the workers) says so and silences its fork warning. Elsewhere spawn
    # (fork is unsafe on macOS).
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tok.to_str(),))
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    with pool:
        pending: deque = deque()
        for docs in chunks:
            pending.append((docs, pool.apply_async(_encode_chunk, (docs,))))
            if len(pending) >= 2 * workers:
                d, res = pending.popleft()
                yield d, res.get()
        while pending:
            d, res = pending.popleft()
            yield d, res.get()


# ----------------------------------------------------------------------------- splits
class _Split:
    """One output split: a shard writer plus counts; holds its latest document back (see module doc)."""

    def __init__(self, name: str, directory: Path, vocab_size: int, shard_tokens: int):
        self.name = name
        self.writer = ShardWriter(directory, name, vocab_size, shard_tokens)
        self.docs = self.tokens = self.bytes = 0
        self.held: tuple[np.ndarray, int] | None = None

    def add(self, tokens: np.ndarray, nbytes: int) -> None:
        if self.held is not None:
            self.writer.add(self.held[0])
        self.held = (tokens, nbytes)
        self.docs += 1
        self.tokens += tokens.size
        self.bytes += nbytes

    def give_held(self, other: "_Split") -> None:
        tokens, nbytes = self.held
        self.held = None
        self.docs, self.tokens, self.bytes = self.docs - 1, self.tokens - tokens.size, self.bytes - nbytes
        other.add(tokens, nbytes)

    def close(self) -> dict:
        if self.held is not None:
            self.writer.add(self.held[0])
            self.held = None
        return {"docs": self.docs, "tokens": self.tokens, "bytes": self.bytes, "shards": self.writer.close()}


# ----------------------------------------------------------------------------- main flow
def _check(cfg: PrepareConfig) -> Path:
    if not 0.0 < cfg.val_fraction <= 0.5:
        raise DataError(f"val_fraction must be in (0, 0.5], got {cfg.val_fraction}")
    for name in ("max_docs", "max_bytes", "workers", "tokenizer_train_bytes"):
        if getattr(cfg, name) < 0:
            raise DataError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.shard_tokens <= 0:
        raise DataError(f"shard_tokens must be > 0, got {cfg.shard_tokens}")
    parse_spec(cfg.tokenizer)  # fail on a bad spec before reading any data
    out = Path(cfg.out).expanduser()
    check_source_apart(out, cfg.source)
    return out


def _documents(cfg: PrepareConfig, stats: SourceStats) -> Iterator[str]:
    return iter_documents(cfg.source, text_field=cfg.text_field, hf_config=cfg.hf_config, hf_split=cfg.hf_split,
                          hf_data_files=cfg.hf_data_files, max_docs=cfg.max_docs, max_bytes=cfg.max_bytes,
                          skip_invalid=cfg.skip_invalid, stats=stats)


def _empty_error(cfg: PrepareConfig, stats: SourceStats) -> DataError:
    why = f" ({stats.skipped_empty} empty, {stats.skipped_invalid} invalid skipped)" \
        if stats.skipped_empty or stats.skipped_invalid else ""
    return DataError(f"source {describe(cfg.source)!r} has no non-empty documents{why}")


def _train_tokenizer(cfg: PrepareConfig) -> Tokenizer:
    """Train on train-split documents (same split as the shards) up to `tokenizer_train_bytes`."""
    kind, _ = parse_spec(cfg.tokenizer)
    if kind == "file":
        return build_tokenizer(cfg.tokenizer, [])
    stats, seen = SourceStats(), {"train": 0}

    def train_docs(include_val: bool) -> Iterator[str]:
        used = 0
        for i, doc in enumerate(_documents(cfg, stats)):
            if include_val or not val_mask(cfg.seed, i, 1, cfg.val_fraction)[0]:
                seen["train"] += 1
                yield doc
                used += len(doc.encode("utf-8"))
                if used >= cfg.tokenizer_train_bytes:
                    return

    tok = build_tokenizer(cfg.tokenizer, train_docs(False))
    if seen["train"] == 0:  # every document drew val (a tiny corpus): learn from all of them instead
        stats = SourceStats()
        tok = build_tokenizer(cfg.tokenizer, train_docs(True))
        if seen["train"] == 0:
            raise _empty_error(cfg, stats)
    return tok


def _write_splits(cfg: PrepareConfig, tok, folder: Path) -> tuple[dict, SourceStats, float, int]:
    """Tokenize every document into train/val shards in `folder`: (split meta, source stats, seconds, workers)."""
    from tqdm import tqdm

    workers = cfg.workers or os.cpu_count() or 1
    splits = {s: _Split(s, folder, tok.vocab_size, cfg.shard_tokens) for s in ("train", "val")}
    stats, index = SourceStats(), 0
    t1 = time.perf_counter()
    bar = tqdm(desc="tokenizing", unit="B", unit_scale=True, disable=not cfg.progress, file=sys.stderr)
    for docs, (tokens, lengths, nbytes) in _encoded_chunks(tok, _chunks(_documents(cfg, stats)), workers):
        is_val = val_mask(cfg.seed, index, len(docs), cfg.val_fraction)
        index += len(docs)
        for doc_tokens, v, b in zip(np.split(tokens, np.cumsum(lengths)[:-1]), is_val, nbytes):
            splits["val" if v else "train"].add(doc_tokens, int(b))
        bar.update(int(nbytes.sum()))
    bar.close()
    t_enc = time.perf_counter() - t1
    if index == 0:
        raise _empty_error(cfg, stats)
    if index < 2:
        raise DataError(f"source {describe(cfg.source)!r} has 1 document; need at least 2 "
                        "(train and val are split by document)")
    for a, b in (("train", "val"), ("val", "train")):
        if splits[b].docs == 0:
            splits[a].give_held(splits[b])
    return {name: s.close() for name, s in splits.items()}, stats, t_enc, workers


def prepare(cfg: PrepareConfig) -> dict:
    """Run the whole pipeline into `cfg.out`; returns the meta dict (also written as meta.json).

    The folder is locked for the whole run (a second prepare into it gets one line naming this pid)."""
    out = _check(cfg)
    check_out(out, cfg.overwrite)  # before the lock file exists: a refused folder is left exactly as it was
    created = not out.exists()
    lock = FolderLock(out, "data folder").acquire()
    try:
        owned = check_out(out, cfg.overwrite)  # again under the lock: another prepare may have just finished
        remove_stale_temps(out.parent, glob.escape(f".{out.name}") + ".tmp-*", older_than=lock.acquired_at)
        meta = _prepare_into(cfg, out, owned)
    except BaseException:
        lock.release()
        if created:  # leave no empty folder behind that we made only to lock it
            (out / ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    lock.release()
    print_summary(meta, out)
    return meta


def _prepare_into(cfg: PrepareConfig, out: Path, owned: set[str]) -> dict:
    """Tokenizer + shards into a temp sibling folder, then its files replace the `owned` ones of `out`."""
    t0 = time.perf_counter()
    tok = _train_tokenizer(cfg)
    t_tok = time.perf_counter() - t0
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        tok.save(tmp)
        write_tokenizer_config(tmp, tok)
        split_meta, stats, t_enc, workers = _write_splits(cfg, tok, tmp)
        meta = build_meta(cfg, tok, split_meta, stats, {"tokenizer_s": t_tok, "tokenize_s": t_enc, "t0": t0,
                                                  "workers": workers})
        atomic_write_json(tmp / "meta.json", meta)
        write_manifest(tmp, "data")  # last: lists (and hashes) every file above
        replace_contents(tmp, out, owned)  # an earlier prepared set in `out` is replaced only now, when complete
    except BaseException as e:
        if is_no_space(e):
            kept = "the previous prepared set is intact" if owned else "nothing was written to it"
            raise DataError(f"no space left on device while writing data folder {out}; {kept} "
                            f"(temporary files removed)") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def main(argv: list[str] | None = None) -> int:
    from banyan.config import parse_cli

    cfg = parse_cli(PrepareConfig, argv, prog="banyan data prepare")
    prepare(cfg)
    return 0
