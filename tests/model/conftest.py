"""Tiny model configs shared by the tests in tests/model."""

import pytest

from banyan.config import ModelConfig


def tiny_config(arch: str = "llama", **overrides) -> ModelConfig:
    """A 2-layer model small enough for fp32 CPU tests; llama uses GQA (4 query, 2 KV heads) and an odd vocab."""
    base = dict(arch=arch, vocab_size=97, n_layer=2, n_head=4, n_kv_head=2 if arch == "llama" else 0, d_model=32,
                max_seq_len=64, tie_embeddings=False)
    if arch == "llama":
        base["rope_theta"] = 50000.0
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture
def make_config():
    return tiny_config
