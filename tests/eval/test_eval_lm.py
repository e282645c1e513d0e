"""banyan.eval.lm: validation loss and exact bits per byte through a stage's loss, chunked or not."""

import math

import torch

from banyan.config import ModelConfig
from banyan.data.metrics import bits_per_byte, nats_and_bytes
from banyan.eval.lm import evaluate_lm
from banyan.model import build_model
from banyan.train.lm import causal_lm_loss


def _setup():
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=53, n_layer=2, n_head=2, n_kv_head=1, d_model=32, max_seq_len=32))
    g = torch.Generator().manual_seed(1)
    batches = []
    for i in range(3):
        x = torch.randint(0, 53, (2, 13), generator=g)
        labels = x[:, 1:].clone()
        labels[0, : 2 + i] = -100  # masked prompt positions are not scored
        batches.append({"input_ids": x[:, :-1], "labels": labels})
    token_bytes = torch.randint(0, 4, (53,), generator=g)
    return model, batches, token_bytes


def test_chunked_validation_equals_unchunked():
    model, batches, tb = _setup()
    plain = evaluate_lm(model, batches, lambda m, b: causal_lm_loss(m, b, 0), tb)
    chunked = evaluate_lm(model, batches, lambda m, b: causal_lm_loss(m, b, 7), tb)
    assert plain["val_tokens"] == chunked["val_tokens"] == sum(int((b["labels"] != -100).sum()) for b in batches)
    assert math.isclose(plain["val_loss"], chunked["val_loss"], rel_tol=1e-6)
    assert math.isclose(plain["val_bpb"], chunked["val_bpb"], rel_tol=1e-6)


def test_bits_per_byte_is_exact_over_scored_tokens():
    model, batches, tb = _setup()
    got = evaluate_lm(model, batches, causal_lm_loss, tb)
    nats = n_bytes = 0
    with torch.no_grad():
        for b in batches:
            a, c = nats_and_bytes(model(b["input_ids"]), b["labels"], tb)
            nats, n_bytes = nats + a, n_bytes + c
    assert math.isclose(got["val_bpb"], bits_per_byte(nats, n_bytes), rel_tol=1e-6)
    assert model.training  # evaluation puts the model back in training mode
