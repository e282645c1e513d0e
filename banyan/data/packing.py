"""Encoded conversations -> next-token examples -> packed (or padded) fixed-shape micro-batches.

An `Example` is one conversation ready for causal-LM training: `input_ids = ids[:-1]` and
`labels[i] = ids[i+1]` where that next token is trained (assistant content or the `<|end|>` closing
an assistant turn, from banyan.data.chat_template.encode_conversation), else IGNORE.

Packing puts whole examples one after another into windows of `seq_len` positions (greedy, in the
given order; an example never straddles two windows). Each packed row carries
`position_ids` (restarting at 0 in every example) and `doc_ids` (the example's slot in the row), so
the model's block-diagonal causal mask (banyan.model.common.document_mask) keeps every example
alone: packing changes speed, never the loss. Unused tail positions are padding: the pad id, labels
IGNORE (masked by position, never by id), and a segment of their own.
Without packing a row holds one example, right-padded to the longest example of the micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # banyan.train.task.IGNORE (the data layer does not import the train layer)


@dataclass(frozen=True)
class Example:
    """One conversation as next-token pairs: input_ids[i] predicts labels[i] (IGNORE: not trained)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained(self) -> int:
        return sum(1 for y in self.labels if y != IGNORE)


def to_example(ids: list[int], trained: list[bool], seq_len: int) -> tuple[Example | None, bool]:
    """-> (example or None when no trained token survives, whether it was truncated).

    A conversation longer than seq_len + 1 ids is cut from the end (its first seq_len + 1 ids kept)."""
    truncated = len(ids) > seq_len + 1
    ids, trained = ids[:seq_len + 1], trained[:seq_len + 1]
    labels = tuple(ids[i + 1] if trained[i + 1] else IGNORE for i in range(len(ids) - 1))
    if not any(y != IGNORE for y in labels):
        return None, truncated
    return Example(tuple(ids[:-1]), labels), truncated


def pack(lengths: list[int], order: list[int], seq_len: int) -> list[list[int]]:
    """Greedy first-fit in `order`: windows (lists of example indices) of at most seq_len positions."""
    windows, current, used = [], [], 0
    for i in order:
        n = lengths[i]
        if current and used + n > seq_len:
            windows.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        windows.append(current)
    return windows


def collate_packed(rows: list[list[Example]], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows -> input_ids, labels, position_ids, doc_ids, each [B, seq_len]."""
    B = len(rows)
    x = torch.full((B, seq_len), pad_id, dtype=torch.long)
    y = torch.full((B, seq_len), IGNORE, dtype=torch.long)
    pos = torch.zeros((B, seq_len), dtype=torch.long)
    doc = torch.zeros((B, seq_len), dtype=torch.long)
    for b, row in enumerate(rows):
        at = 0
        for slot, ex in enumerate(row):
            n = len(ex)
            x[b, at:at + n] = torch.tensor(ex.input_ids)
            y[b, at:at + n] = torch.tensor(ex.labels)
            pos[b, at:at + n] = torch.arange(n)
            doc[b, at:at + n] = slot
            at += n
        # padding: a segment of its own (every query still sees itself, so no row of the mask is empty)
        pos[b, at:] = torch.arange(seq_len - at)
        doc[b, at:] = len(row)
    return {"input_ids": x, "labels": y, "position_ids": pos, "doc_ids": doc}


def collate_padded(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """One example per row, right-padded to the longest: input_ids, labels [B, T] (labels IGNORE on pads)."""
    T = max(len(ex) for ex in examples)
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for b, ex in enumerate(examples):
        x[b, :len(ex)] = torch.tensor(ex.input_ids)
        y[b, :len(ex)] = torch.tensor(ex.labels)
    return {"input_ids": x, "labels": y}


class WindowStream:
    """An endless, deterministic stream of windows: epoch e shuffles the examples with a permutation
    seeded by (seed, e) and packs them (or takes them one per window); `rows(start, n)` returns the
    windows at stream positions start..start+n-1, a pure function of its arguments."""

    def __init__(self, lengths: list[int], seq_len: int, seed: int, packing: bool, shuffle: bool = True):
        if not lengths:
            raise ValueError("WindowStream needs at least one example")
        self.lengths, self.seq_len, self.seed = lengths, seq_len, seed
        self.packing, self.shuffle = packing, shuffle
        self._epochs: list[list[list[int]]] = []
        self._ends: list[int] = []  # stream position after each computed epoch

    def epoch(self, e: int) -> list[list[int]]:
        while len(self._epochs) <= e:
            k = len(self._epochs)
            n = len(self.lengths)
            if self.shuffle:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + k)).tolist()
            else:
                order = list(range(n))
            windows = pack(self.lengths, order, self.seq_len) if self.packing else [[i] for i in order]
            self._epochs.append(windows)
            self._ends.append((self._ends[-1] if self._ends else 0) + len(windows))
        return self._epochs[e]

    def rows(self, start: int, n: int) -> list[list[int]]:
        out, e, pos = [], 0, start
        while len(out) < n:
            self.epoch(e)
            begin = self._ends[e - 1] if e else 0
            if pos < self._ends[e]:
                out.append(self._epochs[e][pos - begin])
                pos += 1
            else:
                e += 1
        return out
