"""Preference pairs as training batches, shared by `banyan dpo` and `banyan reward`.

`PairData` encodes every pair once (banyan.data.prefs.encode_pair) and collates pair indices into

    input_ids   [2B, T]  rows 0..B-1 the chosen sequences, rows B..2B-1 the rejected ones, padded right
    labels      [2B, T]  next-token ids at response positions (the final assistant turn), IGNORE elsewhere
    pair_index  [B]      which pairs these are (a key into a reference log-prob cache)

T is the longest row of the micro-batch (at most train.seq_len). A longer sequence keeps its first
seq_len + 1 tokens; a pair left without a response token on either side is skipped and counted.
Which pairs form micro-batch `micro` of step `step` on `rank` is a pure function of those and the
seed (`pair_indices`: a fresh seeded permutation per epoch), so a resumed run sees the same pairs.
"""

from __future__ import annotations

import sys

import torch

from banyan.data import DataError
from banyan.data.prefs import PrefPair, encode_pair
from banyan.train.task import IGNORE, Batch

Encoded = tuple[list[int], list[bool]]  # ids, response mask


def shift(ids: list[int], mask: list[bool], seq_len: int) -> tuple[list[int], list[int]]:
    """(inputs, labels) of one sequence cut to seq_len + 1 tokens: labels[t] = ids[t+1] where trained."""
    ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
    return ids[:-1], [i if m else IGNORE for i, m in zip(ids[1:], mask[1:])]


class PairData:
    """Encoded pairs of one split; `collate(indices)` gives the batch described in the module docstring."""

    def __init__(self, pairs: list[PrefPair], tok, template: str, seq_len: int, pad_id: int, name: str = "train"):
        self.rows: list[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]] = []
        self.pad_id, self.skipped = pad_id, 0
        for pair in pairs:
            sides = tuple(shift(ids, mask, seq_len) for ids, mask in encode_pair(tok, template, pair))
            if any(all(y == IGNORE for y in labels) for _, labels in sides):
                self.skipped += 1  # the prompt fills seq_len: no response token left to score
                continue
            self.rows.append(sides)
        if self.skipped:
            print(f"{name} pairs: skipped {self.skipped} whose prompt leaves no response token within "
                  f"train.seq_len {seq_len}", file=sys.stderr)
        if not self.rows:
            raise DataError(f"no {name} preference pair has a response within train.seq_len {seq_len} "
                            f"({self.skipped} skipped)")

    def __len__(self) -> int:
        return len(self.rows)

    def collate(self, indices: list[int]) -> Batch:
        seqs = [self.rows[i][0] for i in indices] + [self.rows[i][1] for i in indices]
        t = max(len(x) for x, _ in seqs)
        x = torch.full((len(seqs), t), self.pad_id, dtype=torch.long)
        y = torch.full((len(seqs), t), IGNORE, dtype=torch.long)
        for r, (ids, labels) in enumerate(seqs):
            x[r, :len(ids)] = torch.tensor(ids)
            y[r, :len(labels)] = torch.tensor(labels)
        return {"input_ids": x, "labels": y, "pair_index": torch.tensor(indices, dtype=torch.long)}


def pair_indices(n: int, step: int, micro: int, n_micro: int, rank: int, world: int, batch: int,
                 seed: int) -> list[int]:
    """The `batch` pair indices of micro-batch `micro` of step `step` on `rank` (epochs of seeded permutations)."""
    start = ((step * n_micro + micro) * world + rank) * batch
    out, perms = [], {}
    for pos in range(start, start + batch):
        epoch = pos // n
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perms[epoch][pos % n]))
    return out


def split_pairs(pairs: list[PrefPair], val_fraction: float) -> tuple[list[PrefPair], list[PrefPair]]:
    """(train, val): a fixed (seed 0) random `val_fraction` of the pairs held out, at least one when > 0."""
    if val_fraction <= 0:
        return pairs, []
    n_val = max(1, round(len(pairs) * val_fraction))
    if n_val >= len(pairs):
        raise DataError(f"val_fraction {val_fraction} holds out all {len(pairs)} pairs; lower it or pass val_data")
    held = set(torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))[:n_val].tolist())
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def val_index_batches(n: int, batch: int, max_batches: int, rank: int, world: int) -> list[list[int]]:
    """This rank's held-out micro-batches: pairs 0..n-1 in order, rank-strided, at most max_batches per rank."""
    mine = list(range(rank, n, world))
    chunks = [mine[i:i + batch] for i in range(0, len(mine), batch)]
    return chunks[:max_batches] if max_batches > 0 else chunks
