"""meta.json of a prepared data folder (what `banyan data prepare` made, from what, how fast) and the
summary it prints; the layout is described in banyan.data.prepare."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path

from banyan.data.shards import META_FORMAT, dtype_for_vocab
from banyan.data.sources import SourceStats, describe

META_VERSION = 1
LAYOUT = "each document's tokens followed by <|eos|>; no <|bos|>"


def build_meta(cfg, tok, split_meta: dict, stats: SourceStats, t: dict) -> dict:
    """meta.json of a prepared folder; `t`: tokenizer_s, tokenize_s, t0 (perf_counter at start), workers."""
    from banyan.config import git_commit

    text_bytes = sum(m["bytes"] for m in split_meta.values())
    elapsed = time.perf_counter() - t["t0"]
    vocab = tok.vocab_size
    return {
        "format": META_FORMAT, "format_version": META_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "banyan_commit": git_commit(),
        "source": describe(cfg.source),
        "tokenizer": {"spec": cfg.tokenizer, "kind": tok.kind, "file": "tokenizer.json",
                      "special_ids": tok.special_ids},
        "vocab_size": vocab, "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id,
        "dtype": dtype_for_vocab(vocab).name, "layout": LAYOUT,
        "splits": split_meta,
        "skipped": {"invalid": stats.skipped_invalid, "empty": stats.skipped_empty, "examples": stats.examples},
        "stopped_at_cap": stats.truncated,
        "timing": {"tokenizer_s": round(t["tokenizer_s"], 3), "tokenize_s": round(t["tokenize_s"], 3),
                   "elapsed_s": round(elapsed, 3),
                   "tokenize_mb_s": round(text_bytes / 1e6 / max(t["tokenize_s"], 1e-9), 3),
                   "workers": t["workers"]},
        "config": dataclasses.asdict(cfg),
    }


def print_summary(meta: dict, out: Path) -> None:
    """The lines `banyan data prepare` prints when done: splits, skipped documents, timing."""
    t = meta["timing"]
    sk = meta["skipped"]
    print(f"prepared {meta['source']} -> {out}  (tokenizer {meta['tokenizer']['spec']}, vocab {meta['vocab_size']}, "
          f"{meta['dtype']})")
    for name, s in meta["splits"].items():
        print(f"  {name:5s} {s['docs']:>9,d} docs {s['tokens']:>13,d} tokens {s['bytes'] / 1e6:9.2f} MB text "
              f"{s['bytes'] / max(s['tokens'], 1):5.2f} bytes/token  {len(s['shards'])} shard(s)")
    if sk["invalid"] or sk["empty"]:
        print(f"  skipped {sk['invalid']} invalid, {sk['empty']} empty documents" +
              (f"; first: {sk['examples'][0]}" if sk["examples"] else ""))
    print(f"  tokenizer {t['tokenizer_s']:.1f}s, tokenize {t['tokenize_s']:.1f}s at {t['tokenize_mb_s']:.2f} MB/s "
          f"({t['workers']} workers), total {t['elapsed_s']:.1f}s")
