"""Meta-device build: storage without unTying, and the streamed (shard-wise) init equal to the full init."""

import pytest
import torch

from banyan.config import ModelConfig
from banyan.model import build_model
from banyan.model.common import to_empty
from banyan.parallel import materialize as mat


@pytest.mark.parametrize("n,chunk", [(16, 16), (17, 16), (100, 48), (4099, 1024), (33, 64), (1000, 16)])
def test_streamed_normal_equals_one_draw(n, chunk):
    torch.manual_seed(5)
    want = torch.empty(n).normal_(0.0, 0.02)
    after_want = torch.rand(2)
    torch.manual_seed(5)
    got = torch.empty(n)
    mat.streamed_normal_(got, 0.02, chunk)
    assert torch.equal(got, want)
    assert torch.equal(torch.rand(2), after_want)  # the generator ends where one draw leaves it


@pytest.mark.parametrize("arch,tie", [("llama", True), ("llama", False), ("gpt2", True)])
def test_sharded_init_plan_equals_init_weights(arch, tie):
    cfg = ModelConfig(arch=arch, vocab_size=97, n_layer=2, n_head=2, d_model=40, max_seq_len=37, tie_embeddings=tie)
    torch.manual_seed(3)
    ref = build_model(cfg)
    torch.manual_seed(3)
    model = build_model(cfg, device="meta")
    assert all(p.is_meta for p in model.parameters())
    to_empty(model, torch.device("cpu"))
    mat.init_sharded(model, chunk=48)
    for (name, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    if tie:
        assert model.lm_head.weight is model.output_weight() and model.output_weight() is model.embedding_params()[0]


def test_to_empty_keeps_tied_weights_tied():
    model = build_model(ModelConfig(vocab_size=50, n_layer=1, n_head=2, d_model=16, max_seq_len=16), device="meta")
    to_empty(model, torch.device("cpu"))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(list(model.parameters())) == len(set(map(id, model.parameters())))


def test_row_range_of_plain_tensor_is_everything():
    assert mat.local_row_range(torch.empty(7, 3)) == (0, 7)
