"""MLP and transformer policies: distribution shapes, bounds, causality, batching, parameter matching."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, OneHot

from banyan.rl.policies import CausalTransformer, NetConfig, build_net, count_params, make_actor_critic, make_qnet

B, D, T = 5, 4, 8


def _obs(kind):
    return torch.randn(B, T, D) if kind == "transformer" else torch.randn(B, D)


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_discrete_actor_critic_shapes(kind):
    spec = OneHot(3)
    actor, critic = make_actor_critic(kind, NetConfig(history=T), D, spec, continuous=False)
    td = critic(actor(TensorDict({"observation": _obs(kind)}, batch_size=[B])))
    assert td["logits"].shape == (B, 3)
    assert td["action"].shape == (B, 3)
    assert torch.equal(td["action"].sum(-1), torch.ones(B, dtype=td["action"].dtype))  # one-hot
    assert td["action_log_prob"].shape == (B,)
    assert td["state_value"].shape == (B, 1)
    dist = actor.get_dist(td)
    assert dist.batch_shape == (B,) and dist.probs.shape == (B, 3) and dist.sample().shape == (B, 3)
    torch.testing.assert_close(dist.probs.sum(-1), torch.ones(B))


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_continuous_actor_is_bounded(kind):
    spec = Bounded(low=-2.0, high=2.0, shape=(2,))
    actor, critic = make_actor_critic(kind, NetConfig(history=T), D, spec, continuous=True)
    td = actor(TensorDict({"observation": _obs(kind) * 10}, batch_size=[B]))
    assert td["loc"].shape == (B, 2) and td["scale"].shape == (B, 2)
    assert (td["scale"] > 0).all()
    assert td["action"].shape == (B, 2)
    assert (td["action"].abs() <= 2.0).all()
    assert td["action_log_prob"].shape == (B,)
    assert torch.isfinite(td["action_log_prob"]).all()


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_qnet_shapes(kind):
    q = make_qnet(kind, NetConfig(history=T), D, OneHot(2))
    td = q(TensorDict({"observation": _obs(kind)}, batch_size=[B]))
    assert td["action_value"].shape == (B, 2)
    assert torch.equal(td["action"].argmax(-1), td["action_value"].argmax(-1))


def test_transformer_is_causal_and_batched():
    torch.manual_seed(0)
    net = CausalTransformer(D, 3, history=T, d_model=16, n_head=2, n_layer=2).eval()
    x = torch.randn(B, T, D)
    y = net.forward_all(x)
    assert y.shape == (B, T, 3)
    x2 = x.clone()
    x2[:, -1] += 1.0  # change only the newest observation
    y2 = net.forward_all(x2)
    torch.testing.assert_close(y2[:, :-1], y[:, :-1])  # earlier positions cannot see it
    assert not torch.allclose(y2[:, -1], y[:, -1])
    # KV-free batched forward: one call on the batch equals one call per sample, any leading shape
    torch.testing.assert_close(net(x), torch.cat([net(x[i:i + 1]) for i in range(B)]), atol=1e-5, rtol=1e-5)
    assert net(x.view(1, B, T, D)).shape == (1, B, 3)
    with pytest.raises(ValueError, match="window of 8"):
        net(torch.randn(B, T - 1, D))


def test_match_params_gives_same_budget():
    cfg = NetConfig(history=T, d_model=32, n_layer=2, match_params=True)
    tr = count_params(build_net("transformer", D, 2, cfg))
    mlp = count_params(build_net("mlp", D, 2, cfg))
    assert abs(mlp - tr) / tr < 0.02, (mlp, tr)
    assert count_params(build_net("mlp", D, 2, NetConfig())) != mlp  # the default MLP is smaller


def test_direct_modules_match_torchrl_modules_and_fall_back_for_other_calls():
    from tensordict.nn import TensorDictModule, set_skip_existing
    from torchrl.modules import ValueOperator

    from banyan.rl.modules import DirectModule, DirectValueOperator

    net = build_net("mlp", D, 3, NetConfig())
    obs = torch.randn(B, D)
    for direct, ref in ((DirectModule(net, in_keys=["observation"], out_keys=["logits"]),
                         TensorDictModule(net, in_keys=["observation"], out_keys=["logits"])),
                        (DirectValueOperator(net, in_keys=["observation"]), ValueOperator(net, in_keys=["observation"]))):
        td = TensorDict({"observation": obs}, batch_size=[B])
        out = direct(td)
        key = ref.out_keys[0]
        assert out is td and torch.equal(out[key], ref(TensorDict({"observation": obs}, batch_size=[B]))[key])
        # keyword call and skip_existing take TorchRL's own path
        assert torch.equal(direct(observation=obs), out[key])  # dispatch: tensors in, tensors out
        marker = torch.zeros(B, 3)
        kept = TensorDict({"observation": obs, key: marker}, batch_size=[B])
        with set_skip_existing(True):
            assert direct(kept)[key] is marker


def test_mlp_forward_is_the_layer_stack():
    net = build_net("mlp", D, 3, NetConfig(hidden=16, layers=3))
    x = torch.randn(B, D)
    torch.testing.assert_close(net(x), net.head(net.body(x)), rtol=0, atol=0)
    assert [k for k, _ in net.named_parameters()] == ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias",
                                                      "body.4.weight", "body.4.bias", "head.weight", "head.bias"]


@pytest.mark.parametrize("continuous", [False, True])
def test_direct_actor_get_dist_equals_torchrl(continuous):
    from torchrl.modules import ProbabilisticActor

    spec = Bounded(low=-2.0, high=2.0, shape=(2,)) if continuous else OneHot(3)
    actor, _ = make_actor_critic("mlp", NetConfig(), D, spec, continuous=continuous)
    td = TensorDict({"observation": torch.randn(B, D)}, batch_size=[B])
    fast = actor.get_dist(td.clone())
    ref = ProbabilisticActor.get_dist(actor, td.clone())
    assert type(fast) is type(ref)
    x = ref.sample()
    assert torch.equal(fast.log_prob(x), ref.log_prob(x))
