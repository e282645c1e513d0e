"""Deterministic, rank-sharded batches from prepared token shards (memory-mapped, never loaded whole).

Training windows are `seq_len + 1` tokens inside one shard (they never cross a shard boundary),
indexed as one concatenated range over all shards of the split. `batch(step, micro_step)` is a pure
function of (seed, step, micro_step, rank, world_size): one generator seeded by (seed, step,
micro_step) draws `micro_batch * world_size` distinct window starts and rank r takes slice
[r*B, (r+1)*B), so ranks never read the same window in a step and a resumed run replays exactly.

Validation uses a fixed set of non-overlapping windows (stride `seq_len`, so every target token is
scored at most once) spread evenly over the val split and dealt out disjointly to ranks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from banyan.data import DataError
from banyan.data.folder import verify_data_folder
from banyan.data.shards import META_FORMAT, open_shard


def read_meta(data_dir: str | os.PathLike) -> dict:
    """meta.json of a prepared folder, with errors that say how to make one."""
    d = Path(data_dir)
    fix = f"run `banyan data prepare --out {d}`"
    if not d.is_dir():
        raise DataError(f"data folder not found: {d}; {fix}")
    path = d / "meta.json"
    if not path.is_file():
        raise DataError(f"{d} has no meta.json (not prepared, or preparation did not finish); {fix}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: invalid JSON ({e}); {fix}") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{path}: format {got!r}, expected {META_FORMAT!r}; {fix}")
    return meta


class TokenLoader:
    """Batches of (x, y) LongTensors [micro_batch, seq_len] from one split of a prepared folder."""

    def __init__(self, data_dir: str | os.PathLike, split: str, seq_len: int, micro_batch: int, seed: int,
                 rank: int = 0, world_size: int = 1, expect_vocab: int | None = None):
        if seq_len < 1 or micro_batch < 1:
            raise DataError(f"seq_len and micro_batch must be >= 1, got {seq_len} and {micro_batch}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if seed < 0:
            raise DataError(f"seed must be >= 0, got {seed}")
        self.data_dir = Path(data_dir)
        self.meta = read_meta(self.data_dir)
        verify_data_folder(self.data_dir)  # sizes of all files, hashes of the small ones (shards: CRC on open)
        splits = self.meta.get("splits", {})
        if split not in splits:
            raise DataError(f"{self.data_dir}/meta.json has no split '{split}' (splits: {', '.join(splits)})")
        self.split, self.seq_len, self.micro_batch, self.seed = split, seq_len, micro_batch, seed
        self.rank, self.world_size = rank, world_size
        vocab = int(self.meta["vocab_size"])
        if expect_vocab is not None and expect_vocab != vocab:
            raise DataError(f"{self.data_dir}: vocab size mismatch: expected {expect_vocab}, data has {vocab}")
        self._vocab = vocab
        self.shards = [open_shard(self.data_dir / name, expect_vocab=vocab) for name in splits[split]["shards"]]
        sizes = np.array([len(s) for s in self.shards], dtype=np.int64)
        # A window needs seq_len + 1 tokens: starts 0 .. n - seq_len - 1 in a shard of n tokens.
        self._win_cum = np.concatenate([[0], np.cumsum(np.maximum(sizes - seq_len, 0))])
        # Val windows at stride seq_len: k*seq_len + seq_len + 1 <= n  <=>  k < (n - 1) // seq_len.
        self._val_cum = np.concatenate([[0], np.cumsum(np.maximum(sizes - 1, 0) // seq_len)])
        need = micro_batch * world_size
        if self._win_cum[-1] < need:
            raise DataError(
                f"split '{split}' of {self.data_dir} is too small: {int(sizes.sum())} tokens "
                f"(largest shard {int(sizes.max(initial=0))}) give {int(self._win_cum[-1])} windows of "
                f"seq_len+1 = {seq_len + 1} tokens; need at least micro_batch*world_size = {need}")
        self._token_bytes: torch.Tensor | None = None
        self._tokenizer = None

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def n_tokens(self) -> int:
        return int(sum(len(s) for s in self.shards))

    @property
    def bytes_per_token(self) -> float:
        """Average UTF-8 bytes per token of this split (EOS counts as a token of 0 bytes)."""
        s = self.meta["splits"][self.split]
        return s["bytes"] / max(s["tokens"], 1)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from banyan.data.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.data_dir)
        return self._tokenizer

    @property
    def token_bytes(self) -> torch.Tensor:
        """LongTensor [vocab_size]: bytes of text each id decodes to (0 for specials), for bits per byte."""
        if self._token_bytes is None:
            tb = self.tokenizer.token_bytes()
            if len(tb) != self._vocab:
                raise DataError(f"{self.data_dir}/tokenizer.json has {len(tb)} ids, meta.json says {self._vocab}")
            self._token_bytes = torch.from_numpy(tb)
        return self._token_bytes

    # ------------------------------------------------------------------ batches
    def _gather(self, cum: np.ndarray, idx: np.ndarray, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global window indices -> (x, y); window i of shard s starts at i*stride."""
        shard = np.searchsorted(cum, idx, side="right") - 1
        local = (idx - cum[shard]) * stride
        T = self.seq_len
        buf = np.empty((len(idx), T + 1), dtype=np.int64)
        for row, (s, start) in enumerate(zip(shard, local)):
            buf[row] = self.shards[s][start:start + T + 1]
        t = torch.from_numpy(buf)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def window_starts(self, step: int, micro_step: int = 0) -> np.ndarray:
        """int64 [micro_batch*world_size]: distinct global window indices of one (step, micro_step), all ranks."""
        if step < 0 or micro_step < 0:
            raise DataError(f"step and micro_step must be >= 0, got {step}, {micro_step}")
        rng = np.random.default_rng([self.seed, step, micro_step])
        # Without replacement, so the world_size slices never share a window.
        return rng.choice(int(self._win_cum[-1]), size=self.micro_batch * self.world_size, replace=False)

    def batch(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (x, y), LongTensors [micro_batch, seq_len]; y is x shifted left by one token."""
        B = self.micro_batch
        starts = self.window_starts(step, micro_step)[self.rank * B:(self.rank + 1) * B]
        return self._gather(self._win_cum, starts, stride=1)

    def num_val_batches(self, n_batches: int = 0) -> int:
        """How many val batches `val_batches(n_batches)` yields (same on every rank); <= 0 means all."""
        available = int(self._val_cum[-1]) // (self.micro_batch * self.world_size)
        if available == 0:
            raise DataError(
                f"split '{self.split}' of {self.data_dir} has {int(self._val_cum[-1])} non-overlapping windows of "
                f"{self.seq_len} tokens; need micro_batch*world_size = {self.micro_batch * self.world_size} "
                "for one validation batch (use a smaller seq_len/micro_batch or a larger val_fraction)")
        return available if n_batches <= 0 else min(n_batches, available)

    def val_batches(self, n_batches: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed sequence of this rank's (x, y) over evenly spread, non-overlapping windows."""
        n = self.num_val_batches(n_batches)
        per_step = self.micro_batch * self.world_size
        total, m = int(self._val_cum[-1]), n * per_step
        chosen = (np.arange(m, dtype=np.int64) * total) // m  # m distinct indices spread over [0, total)
        lo = self.rank * self.micro_batch
        for j in range(n):
            idx = chosen[j * per_step + lo: j * per_step + lo + self.micro_batch]
            yield self._gather(self._val_cum, idx, stride=self.seq_len)

    def __repr__(self) -> str:
        return (f"TokenLoader({str(self.data_dir)!r}, split={self.split!r}, tokens={self.n_tokens}, "
                f"seq_len={self.seq_len}, micro_batch={self.micro_batch}, rank={self.rank}/{self.world_size})")
