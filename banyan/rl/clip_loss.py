"""TorchRL's ClipPPOLoss with a training-step entry point that computes only what the step uses.

`ClipPPOLoss.forward` returns, besides the loss terms, a set of diagnostics on every call: the
effective sample size (two logsumexps), the max and mean probability ratio, the clip fraction, all in
a new TensorDict passed through `named_apply`, after a shallow clone of the input. On CartPole's
256-sample minibatches that bookkeeping is ~0.4 of the ~0.5 ms forward, and PPO makes ~4k such
steps in a 50k-step run. `ClipPPO.train_terms(td)` returns the same loss terms in the same op
order, so values and gradients are bitwise those of `forward` (tests/rl/test_clip_loss.py): the ratio
and the KL estimate as `_log_weight` forms them, `_clip_bounds`, the critic's `distance_loss` times
`critic_coeff` as `loss_critic` computes it, `_get_entropy` and `_weighted_loss_entropy`. With
banyan's direct modules (banyan.rl.modules) the networks run on their input tensors and the
distribution is built from the actor's own distribution class, skipping TensorDict reads and
writes; any other actor or critic goes through `_log_weight` and the critic's TensorDict call.
It falls back to `forward` for every configuration it does not cover (a functional or delayed actor,
importance-ratio caps, value clipping, advantage scaling, loss masks, per-head entropy coefficients,
a reduction other than mean, composite actions), so it is never wrong, only sometimes not faster.
`forward` itself is unchanged: callers that want the diagnostics call the loss as usual.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.utils import distance_loss

# The entries train_terms returns (forward returns these and more).
TERMS = ("loss_objective", "loss_critic", "loss_entropy", "entropy", "kl_approx")


class ClipPPO(ClipPPOLoss):
    """`ClipPPOLoss` plus `train_terms(td)`: the loss terms and the logged stats, without the diagnostics."""

    def _lean_config(self) -> bool:
        return (not self.functional and not self.delay_actor and self.max_importance_ratio is None
                and not self.clip_value and self.advantage_norm is None and self.reduction == "mean"
                and self._entropy_coeff_map is None and not self.separate_losses and self._has_critic)

    def _lean_input(self, td: TensorDictBase) -> bool:
        # td.get, not `in td.keys(True)`: building the nested key view costs more than the lookups
        return (td.get(self.tensor_keys.advantage, None) is not None and td.get("shifted_valid", None) is None
                and all(td.get(k, None) is None for k in self._loss_mask_keys()))

    def train_terms(self, td: TensorDictBase) -> dict[str, torch.Tensor]:
        """{loss_objective, loss_critic[, loss_entropy, entropy], kl_approx}: scalars, as `forward` gives them.

        With banyan's direct modules (banyan.rl.modules) the actor and the critic run on their input
        tensors and write nothing into `td`; with other TensorDict modules they write their outputs
        (e.g. `logits`, `state_value`) into `td` itself, as a TensorDictModule call does (`forward`
        works on a shallow clone instead)."""
        if not (self._lean_config() and self._lean_input(td)):
            return self._forward_terms(td)
        advantage = td.get(self.tensor_keys.advantage)  # [N, 1]
        if self.normalize_advantage and advantage.numel() > 1:
            advantage = self._standardize_advantage(advantage, td)
        log_weight, dist, kl_approx = self._ratio(td, advantage.shape[:-1])
        if log_weight is None or log_weight.shape != advantage.shape:  # composite / multi-head actions
            return self._forward_terms(td)
        # forward's surrogate, op for op: min(r * A, clip(r) * A) with r = exp(log_weight)
        gain1 = log_weight.exp() * advantage
        gain2 = log_weight.clamp(*self._clip_bounds).exp() * advantage
        gain = torch.stack([gain1, gain2], -1).min(dim=-1).values
        terms = {"loss_objective": (-gain).mean(), "kl_approx": kl_approx.detach().mean()}
        if self.entropy_bonus:
            entropy = self._get_entropy(dist, adv_shape=advantage.shape[:-1])
            terms["entropy"] = entropy.detach().mean()
            terms["loss_entropy"] = self._weighted_loss_entropy(entropy).mean()
        value = self._value(td)
        target = td.get(self.tensor_keys.value_target)
        terms["loss_critic"] = (self.critic_coeff * distance_loss(target, value, self.loss_critic_type)).mean()
        return terms

    def _forward_terms(self, td: TensorDictBase) -> dict[str, torch.Tensor]:
        out = self(td)
        return {k: out[k] for k in TERMS if k in out.keys()}

    def _ratio(self, td: TensorDictBase, adv_shape: torch.Size):
        """(log pi/pi_old [N, 1], the current distribution, log pi_old/pi [N, 1]), as `_log_weight` computes
        them; log_weight is None where `_log_weight` would need its composite / correction branches."""
        direct = getattr(self.actor_network, "direct_dist", None)
        dist = direct(td) if direct is not None else None
        if dist is None:
            log_weight, dist, kl_approx, log_is_weight = self._log_weight(td, adv_shape=adv_shape)
            return (log_weight if log_is_weight is None else None), dist, kl_approx
        prev_log_prob = td.get(self.tensor_keys.sample_log_prob)
        action = td.get(self.tensor_keys.action)
        if prev_log_prob.requires_grad or action.requires_grad or not isinstance(action, torch.Tensor):
            return None, dist, None  # forward raises its own error for these
        log_prob = dist.log_prob(action)
        return (log_prob - prev_log_prob).unsqueeze(-1), dist, (prev_log_prob - log_prob).unsqueeze(-1)

    def _value(self, td: TensorDictBase) -> torch.Tensor:
        direct = getattr(self.critic_network, "direct_value", None)
        value = direct(td, self.tensor_keys.value) if direct is not None else None
        return value if value is not None else self.critic_network(td).get(self.tensor_keys.value)
