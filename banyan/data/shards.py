"""Binary token shards: a 64-byte little-endian header, then the token ids.

Header layout (struct ``<8sIIQQII``, zero-padded to 64 bytes)::

    magic        8s   b"BANYANTK"
    version      u32  1
    dtype        u32  1 = uint16 (vocab <= 65536), 2 = uint32
    vocab_size   u64  ids are < vocab_size
    n_tokens     u64
    crc32        u32  zlib.crc32 of the token bytes (checked by `open_shard(..., verify=True)`)
    header_size  u32  64

Shards are written to a temporary name and renamed into place, so a file with the final name is
always complete; `open_shard` still checks the size against the header to catch truncation by
copying or a full disk.
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
# open_shard scans for out-of-range ids only up to this many tokens unless verify=True (bigger
# shards would be read in full on every open).
MAX_SCAN_TOKENS = 1 << 24


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


def open_shard(path: str | os.PathLike, expect_vocab: int | None = None, verify: bool = False) -> np.ndarray:
    """Memory-map a shard's tokens (read-only), after validating header, size and vocabulary.

    `expect_vocab`: the tokenizer's vocab size; a shard made with another tokenizer is an error.
    Small shards (and all shards with `verify=True`) are scanned for ids >= vocab; `verify` also
    checks the CRC32 of the token bytes.
    """
    path = Path(path)
    h = read_header(path)
    if expect_vocab is not None and h.vocab_size != expect_vocab:
        raise ShardError(f"{path}: vocab size mismatch: expected {expect_vocab}, shard has {h.vocab_size} "
                         "(prepared with a different tokenizer?)")
    if h.n_tokens == 0:
        return np.zeros(0, dtype=h.dtype)
    tokens = np.memmap(path, dtype=h.dtype, mode="r", offset=HEADER_SIZE, shape=(h.n_tokens,))
    if verify or h.n_tokens <= MAX_SCAN_TOKENS:
        top = int(tokens.max())
        if top >= h.vocab_size:
            raise ShardError(f"{path}: token id {top} >= vocab size {h.vocab_size} (corrupt data)")
    if verify and zlib.crc32(tokens) != h.crc32:
        raise ShardError(f"{path}: checksum mismatch (token data corrupted)")
    return tokens


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
