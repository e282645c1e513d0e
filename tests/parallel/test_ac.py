"""Activation checkpointing: same loss and gradients, unchanged state_dict keys, less saved memory."""

import copy

import pytest
import torch

from banyan.errors import BanyanError
from banyan.config import ModelConfig
from banyan.parallel.ac import apply_activation_checkpointing, is_checkpointed
from banyan.losses import lm_loss
from banyan.model import build_model
from banyan.plan.validate import SavedTensorMeter


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(arch="llama", n_layer=3, dropout=0.1):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, vocab_size=61, n_layer=n_layer, n_head=2, d_model=32, max_seq_len=16,
                                   dropout=dropout))


def loss_and_grads(model, x, seed=5):
    torch.manual_seed(seed)  # same dropout masks in both runs; checkpoint must replay them in recompute
    loss = lm_loss(model.hidden_states(x[:, :-1]), model.output_weight(), x[:, 1:])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", ["full", "selective"])
def test_same_loss_and_gradients_as_without(arch, mode):
    base = tiny(arch)
    ac = copy.deepcopy(base)
    x = torch.randint(0, 61, (2, 13), generator=torch.Generator().manual_seed(1))
    ref_loss, ref_grads = loss_and_grads(base, x)
    keys = list(ac.state_dict())
    n = apply_activation_checkpointing(ac, mode)
    assert n == (3 if mode == "full" else 2)  # selective: blocks 0 and 2
    assert list(ac.state_dict()) == keys  # no wrapper prefix in parameter names
    loss, got = loss_and_grads(ac, x)
    torch.testing.assert_close(loss, ref_loss, atol=0, rtol=0)
    for name, g in ref_grads.items():
        torch.testing.assert_close(got[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_modes_switch_and_undo():
    model = tiny()
    blocks = list(model.blocks())
    cls = type(blocks[0])
    apply_activation_checkpointing(model, "full")
    assert all(is_checkpointed(b) for b in blocks) and isinstance(blocks[0], cls)
    apply_activation_checkpointing(model, "selective")
    assert [is_checkpointed(b) for b in blocks] == [True, False, True]
    apply_activation_checkpointing(model, "none")
    assert not any(is_checkpointed(b) for b in blocks) and type(blocks[0]) is cls
    with pytest.raises(BanyanError, match="none, full or selective"):
        apply_activation_checkpointing(model, "every")


def test_checkpointing_saves_less():
    x = torch.randint(0, 61, (2, 13))
    saved = {}
    for mode in ("none", "selective", "full"):
        model = tiny(dropout=0.0)
        apply_activation_checkpointing(model, mode)
        meter = SavedTensorMeter(list(model.parameters()))
        with meter():
            lm_loss(model.hidden_states(x[:, :-1]), model.output_weight(), x[:, 1:])
        saved[mode] = meter.bytes
    assert saved["full"] < saved["selective"] < saved["none"]
