"""ClipPPO.train_terms: the same loss values and gradients as TorchRL's ClipPPOLoss.forward, or forward itself."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, OneHot

from banyan.rl.clip_loss import ClipPPO
from banyan.rl.policies import NetConfig, make_actor_critic

B, D = 64, 4


def _batch(actor, critic, seed, continuous):
    torch.manual_seed(seed)
    td = TensorDict({"observation": torch.randn(B, D)}, batch_size=[B])
    with torch.no_grad():
        td = critic(actor(td))
    td["advantage"] = torch.randn(B, 1)
    td["value_target"] = td["state_value"] + torch.randn(B, 1)
    # perturb the sampled log-probs so that the ratio is off 1 and the clip is active on some samples
    td["action_log_prob"] = td["action_log_prob"] + 0.3 * torch.randn(B)
    return td.select("observation", "action", "action_log_prob", "advantage", "value_target")


def _grads(loss_fn, terms):
    loss_fn.zero_grad()
    total = sum(v for k, v in terms.items() if k.startswith("loss_"))
    total.backward()
    return [p.grad.clone() for p in loss_fn.parameters() if p.grad is not None]


def _plain(actor, critic):
    """The same networks in TorchRL's own modules (no direct paths)."""
    from tensordict.nn import TensorDictModule
    from torchrl.modules import ProbabilisticActor, ValueOperator

    net, dist = actor.module[0], actor.module[-1]
    actor = ProbabilisticActor(TensorDictModule(net.module, in_keys=net.in_keys, out_keys=net.out_keys),
                               in_keys=dist.in_keys, spec=actor.spec["action"], distribution_class=dist.distribution_class,
                               distribution_kwargs=dict(dist.distribution_kwargs), return_log_prob=True)
    return actor, ValueOperator(critic.module, in_keys=critic.in_keys)


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("continuous,ent_coef,norm_adv", [(False, 0.0, False), (False, 0.01, True),
                                                           (True, 0.01, False)])
def test_train_terms_equal_forward_values_and_gradients(continuous, ent_coef, norm_adv, direct):
    spec = Bounded(low=-2.0, high=2.0, shape=(2,)) if continuous else OneHot(3)
    torch.manual_seed(0)
    actor, critic = make_actor_critic("mlp", NetConfig(), D, spec, continuous=continuous)
    if not direct:
        actor, critic = _plain(actor, critic)
    loss_fn = ClipPPO(actor, critic, clip_epsilon=0.2, entropy_bonus=ent_coef > 0,
                      entropy_coeff=ent_coef if ent_coef > 0 else None, critic_coeff=0.5, loss_critic_type="l2",
                      normalize_advantage=norm_adv, log_explained_variance=False, functional=False)
    td = _batch(actor, critic, 1, continuous)
    if continuous:  # TanhNormal entropy is estimated by sampling: same seed on both sides
        torch.manual_seed(5)
    ref = loss_fn(td.clone())
    ref_grads = _grads(loss_fn, {k: ref[k] for k in ref.keys() if k.startswith("loss_")})
    if continuous:
        torch.manual_seed(5)
    inputs = td.clone()
    called = []
    handle = loss_fn.register_forward_hook(lambda *a: called.append(1))
    lean = loss_fn.train_terms(inputs)
    handle.remove()
    assert not called  # the lean path, not forward
    # the direct modules write nothing into the batch; TorchRL's modules write their outputs into it
    assert ("state_value" in inputs.keys()) == (not direct)
    assert (("loc" if continuous else "logits") in inputs.keys()) == (not direct)
    assert set(lean) == {k for k in ref.keys() if k in ("loss_objective", "loss_critic", "loss_entropy", "entropy",
                                                        "kl_approx")}
    assert ("loss_entropy" in lean) == (ent_coef > 0)
    for k, v in lean.items():
        assert torch.equal(v, ref[k]), k
    assert lean["loss_objective"].requires_grad and not lean["kl_approx"].requires_grad
    lean_grads = _grads(loss_fn, lean)
    assert len(lean_grads) == len(ref_grads) > 0
    for a, b in zip(lean_grads, ref_grads):
        assert torch.equal(a, b)


def test_train_terms_falls_back_to_forward_where_not_covered():
    torch.manual_seed(0)
    actor, critic = make_actor_critic("mlp", NetConfig(), D, OneHot(3), continuous=False)
    loss_fn = ClipPPO(actor, critic, clip_epsilon=0.2, clip_value=0.5, log_explained_variance=False,
                      functional=False)
    assert not loss_fn._lean_config()
    td = _batch(actor, critic, 2, False)
    with torch.no_grad():
        td = critic(td)  # value clipping reads the old state_value
    called = []
    handle = loss_fn.register_forward_hook(lambda *a: called.append(1))
    terms = loss_fn.train_terms(td.clone())
    handle.remove()
    ref = loss_fn(td.clone())
    assert called == [1]  # clip_value is forward's business
    for k, v in terms.items():
        assert torch.equal(v, ref[k]), k
    # a batch with a loss mask also goes through forward
    loss_fn = ClipPPO(actor, critic, clip_epsilon=0.2, log_explained_variance=False, functional=False)
    assert loss_fn._lean_config() and loss_fn._lean_input(td)
    td["shifted_valid"] = torch.ones(B, 1, dtype=torch.bool)
    assert not loss_fn._lean_input(td)
