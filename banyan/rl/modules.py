"""TensorDict modules with a direct path for the one-key-in, one-key-out call every banyan network makes.

`TensorDictModule.forward` is general: keyword dispatch, several in/out keys, `tensordict_out`, and
every output goes through `TensorDict.from_any` (which also probes for pandas, importing it on the first
call: 0.2 s of start-up). PPO calls the actor and the critic this way on every gradient step (about
4k times in a 50k-step CartPole run) and GAE calls the critic once per batch, so `DirectModule` and
`DirectValueOperator` take the plain path for the plain call `module(td)`:

    td[out_key] = module(td[in_key])        # same tensor, same key, same tensordict returned

and fall back to TorchRL's own `forward` for anything else (keyword calls, `tensordict_out`, several
keys, a `method` or keyword in_keys, an active `tensordict.nn.skip_existing()`). Outputs are bitwise the same either way (checked in
tests/rl/test_policies.py); only the bookkeeping is skipped.

`DirectProbabilisticActor` does the same for `get_dist(td)`, which ClipPPOLoss calls on every gradient
step: the parameter network's direct call, then the distribution module's own `get_dist`, instead of a
pass through a TensorDictSequential of the deterministic part under `set_interaction_type` (which a
deterministic network does not read) and a walk over `modules()` to find the distribution module.
`direct_dist(td)` and `DirectValueOperator.direct_value(td, key)` go one step further for
banyan.rl.clip_loss: the networks on their input tensors, nothing written into the TensorDict.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, skip_existing
from torchrl.modules import ProbabilisticActor, ValueOperator


class _DirectForward:
    """Mixin: `forward(td)` = `td.set(out_key, module(td.get(in_key)))` when that is all a call asks for."""

    def forward(self, *args, **kwargs):
        if (len(args) == 1 and not kwargs and isinstance(args[0], TensorDictBase) and len(self.in_keys) == 1
                and len(self.out_keys) == 1 and self.method is None and not self.method_kwargs and self._kwargs is None
                and not skip_existing()):
            td = args[0]
            return td.set(self.out_keys[0], self.module(td.get(self.in_keys[0])))
        return super().forward(*args, **kwargs)


class DirectModule(_DirectForward, TensorDictModule):
    """A TensorDictModule (e.g. the policy network writing `logits`) with the direct single-key path."""


class DirectValueOperator(_DirectForward, ValueOperator):
    """A ValueOperator (`observation` -> `state_value`) with the direct single-key path."""

    def direct_value(self, tensordict: TensorDictBase, value_key) -> torch.Tensor | None:
        """The network's output on its one input, written nowhere; None unless this operator is a plain
        one-key module whose output key is `value_key` (then the caller takes the TensorDict path)."""
        if (len(self.in_keys) == 1 and self.out_keys == [value_key] and self.method is None and not self.method_kwargs
                and self._kwargs is None):
            return self.module(tensordict.get(self.in_keys[0]))
        return None


class DirectProbabilisticActor(ProbabilisticActor):
    """A ProbabilisticActor [DirectModule -> distribution module] whose plain `get_dist(td)` skips the plumbing."""

    def get_dist(self, tensordict, tensordict_out=None, **kwargs):
        if (tensordict_out is None and not kwargs and not self.return_composite and len(self.module) == 2
                and isinstance(self.module[0], DirectModule)):
            return self.module[-1].get_dist(self.module[0](tensordict))
        return super().get_dist(tensordict, tensordict_out, **kwargs)

    def direct_dist(self, tensordict: TensorDictBase):
        """`get_dist(td)` without TensorDict writes: the parameter network on its one input, then the
        distribution module's own class and kwargs on its outputs (a tensor, or a tuple for several
        out_keys, e.g. loc and scale). None when the actor is not [DirectModule -> distribution module]
        fed only by the network's outputs; the caller then uses `get_dist`."""
        net, dist_module = self.module[0], self.module[-1]
        if (self.return_composite or len(self.module) != 2 or not isinstance(net, DirectModule)
                or len(net.in_keys) != 1 or net.method is not None or net.method_kwargs or net._kwargs is not None
                or not set(dist_module.in_keys) <= set(net.out_keys)):
            return None
        out = net.module(tensordict.get(net.in_keys[0]))
        out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        if len(out) != len(net.out_keys):
            return None
        produced = dict(zip(net.out_keys, out))
        kwargs = {(d[-1] if isinstance(d, tuple) else d): produced[k]
                  for d, k in zip(dist_module.dist_keys, dist_module.in_keys)}
        return dist_module.distribution_class(**kwargs, **dict(dist_module.distribution_kwargs))
