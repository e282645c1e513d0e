"""Bits per byte on cases with closed-form answers."""

import math

import pytest
import torch

from banyan.data.metrics import bits_per_byte, nats_and_bytes, target_bytes


def test_uniform_over_bytes_is_8_bits_per_byte():
    # 256 one-byte tokens, uniform prediction: CE = ln 256 per token = 8 bits per byte
    logits = torch.zeros(2, 10, 256)
    targets = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))
    nats, nbytes = nats_and_bytes(logits, targets, torch.ones(256, dtype=torch.long))
    assert nbytes == 20
    assert nats == pytest.approx(20 * math.log(256), rel=1e-6)
    assert bits_per_byte(nats, nbytes) == pytest.approx(8.0, rel=1e-6)


def test_multibyte_tokens_and_specials():
    # vocab of 4: a 0-byte special, tokens of 1, 2 and 3 bytes; uniform => ln 4 nats = 2 bits per token
    token_bytes = torch.tensor([0, 1, 2, 3])
    targets = torch.tensor([[1, 2, 3, 0]])
    nats, nbytes = nats_and_bytes(torch.zeros(1, 4, 4), targets, token_bytes)
    assert nbytes == 6
    assert bits_per_byte(nats, nbytes) == pytest.approx(4 * 2 / 6)


def test_perfect_prediction_is_zero_and_ignore_index():
    token_bytes = torch.tensor([0, 1, 2, 3])
    targets = torch.tensor([3, -100, 2])
    logits = torch.full((3, 4), -1e4)
    logits[0, 3] = logits[2, 2] = logits[1, 0] = 1e4
    nats, nbytes = nats_and_bytes(logits, targets, token_bytes)
    assert nbytes == 5 and target_bytes(targets, token_bytes) == 5
    assert bits_per_byte(nats, nbytes) == pytest.approx(0.0, abs=1e-6)


def test_bits_per_byte_formula_and_errors():
    assert bits_per_byte(math.log(2) * 10, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="total_bytes must be positive"):
        bits_per_byte(1.0, 0)
