"""Grow a model's vocabulary: for a tokenizer made before the chat tokens existed.

`banyan.data.tokenizer.Tokenizer` appends the reserved special tokens a foreign tokenizer.json
lacks, so its vocabulary can outgrow the model's. `resize_token_embeddings` adds the missing rows to
the token embedding and the output head (initialised to the mean existing row, so a new token
starts as an "average" token instead of a random direction) and updates `model.config.vocab_size`.
A tied head stays tied. Build the optimizer after resizing: the parameters are new tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from banyan.errors import ConfigError
from banyan.model.common import CausalLM


def _grown(weight: torch.Tensor, new_rows: int) -> nn.Parameter:
    """weight [V, D] -> Parameter [V + new_rows, D]: the old rows, then copies of their mean."""
    mean = weight.detach().float().mean(dim=0, keepdim=True).to(weight.dtype)  # [1, D]
    grown = torch.cat([weight.detach(), mean.expand(new_rows, -1)], dim=0)  # [V + new_rows, D]
    return nn.Parameter(grown.contiguous(), requires_grad=weight.requires_grad)


def _module_holding(model: nn.Module, weight: torch.Tensor, kind: type) -> nn.Module:
    for module in model.modules():
        if isinstance(module, kind) and module.weight is weight:
            return module
    raise ConfigError(f"{type(model).__name__}: no {kind.__name__} holds the expected weight")


@torch.no_grad()
def resize_token_embeddings(model: CausalLM, new_vocab: int) -> CausalLM:
    """Grow the token embedding and head of `model` to `new_vocab` rows in place; returns the model."""
    old = model.config.vocab_size
    if new_vocab < old:
        raise ConfigError(f"resize_token_embeddings: new vocab {new_vocab} is smaller than the model's {old}; "
                          "shrinking would drop trained tokens")
    if new_vocab == old:
        return model
    embedding = _module_holding(model, model.embedding_params()[0], nn.Embedding)
    head = _module_holding(model, model.output_weight(), nn.Linear)
    tied = head.weight is embedding.weight
    if embedding.weight.shape[0] != old or head.weight.shape[0] != old:
        raise ConfigError(f"model.config.vocab_size is {old} but the embedding has {embedding.weight.shape[0]} "
                          f"rows and the head {head.weight.shape[0]}")
    embedding.weight = _grown(embedding.weight, new_vocab - old)
    embedding.num_embeddings = new_vocab
    head.weight = embedding.weight if tied else _grown(head.weight, new_vocab - old)
    head.out_features = new_vocab
    model.config.vocab_size = new_vocab
    return model
