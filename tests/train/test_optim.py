"""Optimizers: param groups, 8-bit AdamW vs fp32 AdamW, Muon, exact state round-trips, state bytes."""

import copy
import io
import sys

import pytest
import torch

from banyan.errors import BanyanError
from banyan.config import ModelConfig, OptimConfig
from banyan.losses import lm_loss
from banyan.model import build_model
from banyan.train.optim import MuonAdamW, build_optimizer, optimizer_state_bytes, tensor_bytes
from banyan.train.schedule import set_lr

# d_model 128 with 2 KV heads makes every matrix >= 4096 values, so bitsandbytes quantises all of them
CFG = dict(arch="llama", vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, d_model=128, max_seq_len=32)


# these models are tiny: one thread is as fast, and immune to oversubscription on a busy 2-core box
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**CFG, **kw}))


def batch(seed=1, b=4, t=16):
    return torch.randint(0, CFG["vocab_size"], (b, t + 1), generator=torch.Generator().manual_seed(seed))


def step(model, opt, x):
    loss = lm_loss(model.hidden_states(x[:, :-1]), model.output_weight(), x[:, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def test_param_groups_decay_matrices_and_embeddings_not_norms():
    model = tiny(tie_embeddings=True)
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.1))
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in groups["decay"]["params"])
    assert any(p is model.model.embed_tokens.weight for p in groups["decay"]["params"])  # nanoGPT convention
    assert all(p.ndim == 1 for p in groups["no_decay"]["params"])
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == model.num_params()  # the tied head is counted once
    assert all(g["initial_lr"] == 1e-3 for g in opt.param_groups)


def test_adamw8bit_matches_adamw_with_quarter_of_the_state():
    x = batch()
    losses, per_param = {}, {}
    for name in ("adamw", "adamw8bit"):
        model = tiny()
        opt = build_optimizer(model, OptimConfig(name=name, lr=3e-3))
        losses[name] = [step(model, opt, x) for _ in range(12)]
        per_param[name] = optimizer_state_bytes(opt) / model.num_params()
        if name == "adamw8bit":
            state = opt.state[model.model.layers[0].self_attn.k_proj.weight]
            assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8
    assert losses["adamw8bit"][-1] < 0.5 * losses["adamw8bit"][0]  # it learns
    assert abs(losses["adamw8bit"][-1] - losses["adamw"][-1]) < 0.05 * losses["adamw"][-1]
    assert per_param["adamw8bit"] <= 2.1
    assert 8.0 <= per_param["adamw"] < 8.01


@pytest.mark.parametrize("name", ["adamw", "adamw8bit", "muon"])
def test_state_dict_round_trip_gives_identical_next_step(name):
    model = tiny()
    opt = build_optimizer(model, OptimConfig(name=name, lr=3e-3))
    for s in range(2):
        step(model, opt, batch(s))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    twin = copy.deepcopy(model)
    opt2 = build_optimizer(twin, OptimConfig(name=name, lr=3e-3))
    opt2.load_state_dict(loaded)
    assert optimizer_state_bytes(opt2) == optimizer_state_bytes(opt)  # 8-bit stays 8-bit
    if name == "muon":  # the schedule must still reach the inner optimizers' (new) group dicts
        opt2.adamw.load_state_dict(loaded["adamw"])  # as DCP does: the parts, not the wrapper
        set_lr(opt2, 1.0)
        assert opt2.param_groups[0] is opt2.muon.param_groups[0]
        assert opt2.param_groups[-1] is opt2.adamw.param_groups[-1]
    step(model, opt, batch(7))
    step(twin, opt2, batch(7))
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), n


def test_muon_trains_hidden_matrices_and_follows_the_schedule():
    model = tiny()
    cfg = OptimConfig(name="muon", lr=3e-3, muon_lr=0.02)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, MuonAdamW) and isinstance(opt, torch.optim.Optimizer)
    muon_ids = {id(p) for p in opt.muon.param_groups[0]["params"]}
    assert id(model.model.layers[0].mlp.up_proj.weight) in muon_ids
    assert id(model.model.embed_tokens.weight) not in muon_ids and id(model.lm_head.weight) not in muon_ids
    set_lr(opt, 0.5)
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.01)
    assert opt.adamw.param_groups[0]["lr"] == pytest.approx(1.5e-3)
    set_lr(opt, 1.0)
    x = batch()
    losses = [step(model, opt, x) for _ in range(12)]
    assert losses[-1] < 0.5 * losses[0]
    # Muon keeps one fp32 momentum per matrix value; AdamW two moments + a step per tensor
    matrices = sum(p.numel() for p in opt.muon.param_groups[0]["params"])
    rest = [p for g in opt.adamw.param_groups for p in g["params"]]
    assert optimizer_state_bytes(opt) == 4 * matrices + sum(8 * p.numel() + 4 for p in rest)


def test_tensor_bytes_counts_shared_storage_once():
    a = torch.zeros(10)
    assert tensor_bytes([a, a[:5], torch.zeros(3, dtype=torch.uint8)]) == 43


def test_missing_bitsandbytes_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` raise ImportError
    with pytest.raises(BanyanError, match=r"banyan-lm\[optim8bit\]"):
        build_optimizer(tiny(), OptimConfig(name="adamw8bit"))


@pytest.mark.slow
def test_torchao_adamw8bit_trains_and_round_trips():  # its first step compiles (~1 min on 2 cores)
    model = tiny()
    opt = build_optimizer(model, OptimConfig(name="adamw8bit-torchao", lr=3e-3))
    set_lr(opt, 0.5)  # plain floats in the groups, as the schedule writes them
    x = batch()
    losses = [step(model, opt, x) for _ in range(6)]
    assert losses[-1] < losses[0]
    assert all(isinstance(g["lr"], float) for g in opt.param_groups)
    assert optimizer_state_bytes(opt) / model.num_params() < 2.2
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    twin = copy.deepcopy(model)
    opt2 = build_optimizer(twin, OptimConfig(name="adamw8bit-torchao", lr=3e-3))
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    set_lr(opt2, 0.5)
    step(model, opt, batch(3))
    step(twin, opt2, batch(3))
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_muon_fp32_newton_schulz_matches_torch_bf16_within_bf16_precision():
    import torch.optim._muon as impl

    from banyan.train.optim import newton_schulz

    g = torch.Generator().manual_seed(0)
    for shape in ((64, 176), (176, 64), (48, 48)):
        grad = torch.randn(*shape, generator=g)
        ours = newton_schulz(grad, (3.4445, -4.7750, 2.0315), 5, 1e-7)
        ref = impl._zeropower_via_newtonschulz(grad, (3.4445, -4.7750, 2.0315), 5, 1e-7).float()
        assert ours.shape == grad.shape and ours.dtype == torch.float32
        assert (ours - ref).abs().max() < 0.05 * ref.abs().max()  # bf16 has ~3 significant digits
        s = torch.linalg.svdvals(ours.double())
        assert 0.5 < float(s.min()) and float(s.max()) < 1.5  # orthogonalised: Muon's S' ~ U(0.5, 1.5)


@pytest.mark.parametrize("nesterov", [True, False])
def test_batched_muon_step_is_torch_muon(nesterov):
    """banyan's Muon (Newton-Schulz batched by shape) against torch.optim.Muon on the same parameters:
    shapes that batch (two 16x24, two transposed 24x16 sharing their Gram size with them), a lone square,
    weight decay, 3 steps; then torch's optimizer continues from banyan's state dict."""
    from banyan.train.optim import Muon

    g = torch.Generator().manual_seed(0)
    shapes = [(16, 24), (24, 16), (16, 24), (8, 8), (24, 16)]
    ours = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov)
    opt, ref_opt = Muon(ours, ns_dtype=torch.bfloat16, **kw), torch.optim.Muon(ref, **kw)
    for _ in range(3):
        grads = [torch.randn(*s, generator=g) for s in shapes]
        for p, q, gr in zip(ours, ref, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        ref_opt.step()
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6)
    resumed = torch.optim.Muon(ref, **kw)
    resumed.load_state_dict(opt.state_dict())
    assert torch.equal(resumed.state_dict()["state"][0]["momentum_buffer"], opt.state[ours[0]]["momentum_buffer"])


def test_batched_newton_schulz_equals_one_at_a_time():
    from banyan.train.optim import batched_newton_schulz, newton_schulz

    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(*s, generator=g) for s in [(12, 20), (20, 12), (12, 20), (5, 5)]]
    coef = (3.4445, -4.7750, 2.0315)
    together = batched_newton_schulz(grads, coef, 5, 1e-7, torch.float32)
    for gr, t in zip(grads, together):
        assert t.shape == gr.shape
        torch.testing.assert_close(t, newton_schulz(gr, coef, 5, 1e-7), rtol=1e-5, atol=1e-6)
