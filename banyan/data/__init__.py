"""Data path: text sources -> tokenizer -> binary token shards -> batch loader.

Modules: `sources` (documents from Shakespeare, files, jsonl, parquet, HF datasets), `tokenizer`
(byte-level BPE / char, HF `tokenizers`), `shards` (headered binary token files), `prepare`
(`banyan data prepare`), `loader` (deterministic, rank-sharded batches) and `metrics` (bits per byte).
Heavy imports stay inside those modules so `import banyan.data` is cheap.
"""

from banyan.errors import DataError


__all__ = ["DataError"]
