"""resize_token_embeddings: old rows kept, new rows = mean row, tied stays tied, forward still works."""

import pytest
import torch

from banyan.errors import ConfigError
from banyan.model import build_model
from banyan.model.resize import resize_token_embeddings


@pytest.mark.parametrize("arch,tied", [("llama", False), ("llama", True), ("gpt2", True)])
def test_resize_grows_embedding_and_head(make_config, arch, tied):
    torch.manual_seed(0)
    model = build_model(make_config(arch, tie_embeddings=tied))
    old_emb = model.embedding_params()[0].detach().clone()
    old_head = model.output_weight().detach().clone()
    ids = torch.randint(0, 97, (2, 8))
    before = model(ids)
    resize_token_embeddings(model, 104)
    emb, head = model.embedding_params()[0], model.output_weight()
    assert model.config.vocab_size == 104 and emb.shape == (104, 32) and head.shape == (104, 32)
    assert torch.equal(emb[:97], old_emb) and torch.equal(head[:97], old_head)
    assert torch.allclose(emb[97:], old_emb.mean(0).expand(7, -1))
    assert torch.allclose(head[97:], old_head.mean(0).expand(7, -1))
    assert (head is emb) == tied
    assert all(p.requires_grad for p in model.parameters())
    after = model(ids)  # old tokens: same logits on the old ids, and 7 more columns
    assert after.shape == (2, 8, 104) and torch.allclose(after[..., :97], before, atol=1e-6)
    model(torch.tensor([[100, 103]])).sum().backward()  # the new ids embed and get gradients
    assert emb.grad is not None and emb.grad[100].abs().sum() > 0


def test_resize_refuses_to_shrink_and_is_noop_at_same_size(make_config):
    model = build_model(make_config("llama"))
    weight = model.embedding_params()[0]
    assert resize_token_embeddings(model, 97) is model and model.embedding_params()[0] is weight
    with pytest.raises(ConfigError, match="smaller than the model's 97"):
        resize_token_embeddings(model, 90)
