"""Data path: text sources -> tokenizer -> binary token shards -> batch loader.

Modules: `sources` (documents from Shakespeare, files, jsonl, parquet, HF datasets), `tokenizer`
(byte-level BPE / char, HF `tokenizers`), `shards` (headered binary token files), `prepare`
(`banyan data prepare`), `loader` (deterministic, rank-sharded batches), `metrics` (bits per byte),
`chat` (conversation records -> turns), `chat_template` (the Jinja chat template, ids + trained mask,
tokenizer_config.json) and `dialogue` (the embedded shakespeare-dialogue chat data).
Heavy imports stay inside those modules so `import banyan.data` is cheap.
"""

from banyan.errors import DataError


__all__ = ["DataError"]
