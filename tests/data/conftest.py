"""Fixtures for data tests: small trained tokenizers (session-scoped: training is the slow part)."""

import pytest

from datakit import make_text


@pytest.fixture(scope="session")
def train_texts():
    return [make_text(400, seed) for seed in range(20)]


@pytest.fixture(scope="session")
def bpe_tok(train_texts):
    from banyan.data.tokenizer import Tokenizer

    return Tokenizer.train_bpe(train_texts, 400)


@pytest.fixture(scope="session")
def char_tok(train_texts):
    from banyan.data.tokenizer import Tokenizer

    return Tokenizer.train_char(train_texts[:10])
