"""Binary token shards: a 64-byte little-endian header, then the token ids.

Header layout (struct ``<8sIIQQII``, zero-padded to 64 bytes)::

    magic        8s   b"BANYANTK"
    version      u32  1
    dtype        u32  1 = uint16 (vocab <= 65536), 2 = uint32
    vocab_size   u64  ids are < vocab_size
    n_tokens     u64
    crc32        u32  zlib.crc32 of the token bytes (checked by every `open_shard`)
    header_size  u32  64

Shards are written to a temporary name and renamed into place, so a file with the final name is
always complete; `open_shard` still checks the size against the header to catch truncation by
copying or a full disk, and reads the whole shard once: every id against the vocab and the CRC32 of
the bytes, so a shard altered after it was written (bit rot, a bad copy, an edit that keeps ids in
range) is never trained on. The read is sequential and costs about what the first epoch's page
faults would (measured in README: ~1 GB/s per core); a data folder's manifest adds only sizes for
the shards, since their CRC already covers the bytes.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from banyan.errors import DataError, ShardError
from banyan.io import atomic_path

MAGIC = b"BANYANTK"
META_FORMAT = "banyan-token-shards"  # meta.json "format" of a prepared folder (prepare.py, loader.py)
VERSION = 1
HEADER_SIZE = 64
_HEADER = struct.Struct("<8sIIQQII")
_DTYPES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
# open_shard checks a shard this many tokens at a time (bounded memory for multi-GB shards)
SCAN_CHUNK_TOKENS = 1 << 24


@dataclass(frozen=True)
class ShardHeader:
    version: int
    dtype: np.dtype
    vocab_size: int
    n_tokens: int
    crc32: int


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return _DTYPES[1] if vocab_size <= 1 << 16 else _DTYPES[2]


def _code(dtype: np.dtype) -> int:
    return next(code for code, dt in _DTYPES.items() if dt == dtype)


def write_shard(path: str | os.PathLike, tokens: np.ndarray, vocab_size: int) -> Path:
    """Write `tokens` (1-D ints in [0, vocab_size)) as a shard, atomically (temp file + os.replace)."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size == 0 or tokens.dtype.kind not in "iu":
        raise ShardError(f"{path}: tokens must be a non-empty 1-D integer array, got shape {tokens.shape} "
                         f"dtype {tokens.dtype}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise ShardError(f"{path}: token ids must lie in [0, {vocab_size}), got min {lo} max {hi}")
    dtype = dtype_for_vocab(vocab_size)
    data = np.ascontiguousarray(tokens, dtype=dtype)
    header = _HEADER.pack(MAGIC, VERSION, _code(dtype), vocab_size, data.size, zlib.crc32(data), HEADER_SIZE)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # fsynced before the rename
        f.write(header.ljust(HEADER_SIZE, b"\0"))
        f.write(memoryview(data).cast("B"))
    return path


def read_header(path: str | os.PathLike) -> ShardHeader:
    """Parse and check a shard's header and size (not the token values)."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"shard not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < _HEADER.size:
        raise ShardError(f"{path}: truncated header ({size} bytes; a shard starts with a {HEADER_SIZE}-byte header)")
    magic, version, code, vocab, n, crc, header_size = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise ShardError(f"{path}: not a banyan token shard (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise ShardError(f"{path}: unsupported shard format version {version} (this banyan reads version {VERSION})")
    if code not in _DTYPES:
        raise ShardError(f"{path}: unknown token dtype code {code} (expected one of {sorted(_DTYPES)})")
    if header_size != HEADER_SIZE:
        raise ShardError(f"{path}: header size {header_size}, expected {HEADER_SIZE}")
    dtype = _DTYPES[code]
    if vocab <= 0 or dtype != dtype_for_vocab(vocab):
        raise ShardError(f"{path}: dtype {dtype.name} does not fit vocab size {vocab} (corrupt header)")
    expected = HEADER_SIZE + n * dtype.itemsize
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise ShardError(f"{path}: {what}: header says {n} tokens ({expected} bytes), file has {size} bytes")
    return ShardHeader(version, dtype, int(vocab), int(n), int(crc))


def open_shard(path: str | os.PathLike, expect_vocab: int | None = None, verify: bool = True) -> np.ndarray:
    """Memory-map a shard's tokens (read-only), after validating header, size, vocabulary and contents.

    `expect_vocab`: the tokenizer's vocab size; a shard made with another tokenizer is an error.
    `verify` (default; False only to peek at a shard being diagnosed) reads every token once: an id
    >= vocab is a ShardError naming its byte offset, and the CRC32 of the bytes must match the header.
    """
    path = Path(path)
    h = read_header(path)
    if expect_vocab is not None and h.vocab_size != expect_vocab:
        raise ShardError(f"{path}: vocab size mismatch: expected {expect_vocab}, shard has {h.vocab_size} "
                         "(prepared with a different tokenizer?)")
    if h.n_tokens == 0:
        return np.zeros(0, dtype=h.dtype)
    tokens = np.memmap(path, dtype=h.dtype, mode="r", offset=HEADER_SIZE, shape=(h.n_tokens,))
    if verify:
        check_tokens(path, tokens, h)
    return tokens


def check_tokens(path: Path, tokens: np.ndarray, h: ShardHeader) -> None:
    """Every id < vocab and the CRC32 of the bytes as the header says; one ShardError otherwise."""
    crc = 0
    for lo in range(0, h.n_tokens, SCAN_CHUNK_TOKENS):
        chunk = tokens[lo:lo + SCAN_CHUNK_TOKENS]
        if int(chunk.max()) >= h.vocab_size:
            i = lo + int(np.argmax(chunk >= h.vocab_size))
            raise ShardError(f"{path}: token id {int(tokens[i])} >= vocab size {h.vocab_size} at token {i} "
                             f"(byte offset {HEADER_SIZE + i * h.dtype.itemsize}; corrupt data)")
        crc = zlib.crc32(chunk, crc)
    if crc != h.crc32:
        raise ShardError(f"{path}: checksum mismatch: CRC32 of the token bytes (offset {HEADER_SIZE} to "
                         f"{HEADER_SIZE + h.n_tokens * h.dtype.itemsize}) is {crc:08x}, the header says "
                         f"{h.crc32:08x} (token data corrupted after it was written)")


class ShardWriter:
    """Append token arrays; every `shard_tokens` tokens become `{prefix}_{index:06d}.bin` in `directory`."""

    def __init__(self, directory: str | os.PathLike, prefix: str, vocab_size: int, shard_tokens: int):
        if shard_tokens <= 0:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        self.directory, self.prefix = Path(directory), prefix
        self.vocab_size, self.shard_tokens = vocab_size, shard_tokens
        self.dtype = dtype_for_vocab(vocab_size)
        self.files: list[str] = []
        self.n_tokens = 0
        self._pending: list[np.ndarray] = []
        self._pending_n = 0

    def add(self, tokens: np.ndarray) -> None:
        if tokens.size == 0:
            return
        self._pending.append(np.asarray(tokens, dtype=self.dtype))
        self._pending_n += tokens.size
        self.n_tokens += tokens.size
        while self._pending_n >= self.shard_tokens:
            buf = np.concatenate(self._pending)
            self._write(buf[: self.shard_tokens])
            rest = buf[self.shard_tokens:]
            self._pending, self._pending_n = ([rest] if rest.size else []), rest.size

    def close(self) -> list[str]:
        """Write what is left; returns the shard file names in order."""
        if self._pending_n:
            self._write(np.concatenate(self._pending))
            self._pending, self._pending_n = [], 0
        return list(self.files)

    def _write(self, tokens: np.ndarray) -> None:
        name = f"{self.prefix}_{len(self.files):06d}.bin"
        write_shard(self.directory / name, tokens, self.vocab_size)
        self.files.append(name)
