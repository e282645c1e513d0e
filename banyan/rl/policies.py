"""Policy and value networks: an MLP on the current observation, a causal transformer over the last T.

Both map observations to a vector (logits, Gaussian parameters, a value or Q-values) and are wrapped
into TorchRL modules by `make_actor_critic` (PPO) and `make_qnet` (DQN).

The transformer's forward is KV-free and batched: each call sees the whole window [B, T, D] at once
(no cache carried between environment steps, so collection, evaluation and the PPO update all run
the same code on any batch shape), applies causal self-attention, and reads the output at the last,
newest position. With a causal mask the last position still attends to all T frames, and every
earlier position's output is the prediction from a shorter history (checked in tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class NetConfig:
    """Network shape for actor, critic and Q-network."""

    hidden: int = 64
    """MLP hidden width."""
    layers: int = 2
    """MLP hidden layers."""
    d_model: int = 32
    """Transformer residual width."""
    n_head: int = 2
    """Transformer attention heads."""
    n_layer: int = 1
    """Transformer blocks."""
    history: int = 8
    """Transformer context: the last T observations."""
    match_params: bool = False
    """Resize the MLP's hidden width so it has as many parameters as the transformer would."""


def _layer_init(layer: nn.Linear, std: float) -> nn.Linear:
    # Orthogonal init with gain sqrt(2) for hidden layers and small gains for heads: the PPO
    # implementation detail shown to matter by Huang et al. 2022, "The 37 implementation details of PPO".
    nn.init.orthogonal_(layer.weight, std)
    nn.init.zeros_(layer.bias)
    return layer


class MLP(nn.Module):
    """obs [..., D] -> [..., out]; tanh hidden layers (as in CleanRL's PPO)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64, layers: int = 2, head_std: float = 1.0):
        super().__init__()
        dims = [in_dim] + [hidden] * layers
        body = []
        for a, b in zip(dims[:-1], dims[1:]):
            body += [_layer_init(nn.Linear(a, b), math.sqrt(2)), nn.Tanh()]
        self.body = nn.Sequential(*body)  # kept as modules: parameter names body.0.weight, ... in checkpoints
        self.head = _layer_init(nn.Linear(dims[-1], out_dim), head_std)
        self._hidden = tuple(self.body[::2])  # the Linear layers (a plain tuple: not registered twice)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # The same ops as head(body(obs)), without a Module call per layer: on CartPole's [8, 4] inputs
        # that halves the forward (28 -> 13 us), and PPO makes ~20k such calls a run. Hooks on the
        # inner layers are therefore not called.
        x = obs
        for layer in self._hidden:
            x = torch.tanh(F.linear(x, layer.weight, layer.bias))
        return F.linear(x, self.head.weight, self.head.bias)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, C]
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=-1)
        # [B, T, C] -> [B, H, T, C/H]
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class CausalTransformer(nn.Module):
    """obs window [..., T, D] -> [..., out], read at the newest position."""

    def __init__(self, in_dim: int, out_dim: int, history: int, d_model: int = 32, n_head: int = 2,
                 n_layer: int = 1, head_std: float = 1.0):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"net.d_model ({d_model}) must divide by net.n_head ({n_head})")
        self.history = history
        self.embed = nn.Linear(in_dim, d_model)
        self.pos = nn.Parameter(torch.randn(history, d_model) * 0.02)  # learned positions [T, C]
        self.blocks = nn.ModuleList(Block(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = _layer_init(nn.Linear(d_model, out_dim), head_std)

    def forward_all(self, obs: torch.Tensor) -> torch.Tensor:
        """Outputs at every position: [..., T, D] -> [..., T, out]."""
        lead, (T, D) = obs.shape[:-2], obs.shape[-2:]
        if T != self.history:
            raise ValueError(f"transformer expects a window of {self.history} observations, got {T}")
        x = self.embed(obs.reshape(-1, T, D)) + self.pos  # [B, T, C]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x)).reshape(*lead, T, -1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.forward_all(obs)[..., -1, :]


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_net(kind: Literal["mlp", "transformer"], in_dim: int, out_dim: int, cfg: NetConfig,
              head_std: float = 1.0) -> nn.Module:
    """One network of the requested kind; `cfg.match_params` sizes the MLP to the transformer's count."""
    if kind == "transformer":
        return CausalTransformer(in_dim, out_dim, cfg.history, cfg.d_model, cfg.n_head, cfg.n_layer, head_std)
    if kind != "mlp":
        raise ValueError(f"unknown policy '{kind}' (expected mlp or transformer)")
    hidden = cfg.hidden
    if cfg.match_params:
        target = count_params(CausalTransformer(in_dim, out_dim, cfg.history, cfg.d_model, cfg.n_head, cfg.n_layer))
        # MLP parameters: (D+1)h + (layers-1)(h+1)h + (h+1)out, increasing in h; take the closest width
        n = lambda h: (in_dim + 1) * h + (cfg.layers - 1) * (h + 1) * h + (h + 1) * out_dim  # noqa: E731
        hidden = min(range(1, 8192), key=lambda h: abs(n(h) - target))
    return MLP(in_dim, out_dim, hidden, cfg.layers, head_std)


# ----------------------------------------------------------------------------- TorchRL wrappers
def make_actor_critic(kind: str, cfg: NetConfig, obs_dim: int, action_spec, continuous: bool):
    """(actor, critic) for PPO.

    Discrete: logits [B, n] -> OneHotCategorical, action one-hot [B, n].
    Continuous: [B, 2A] -> (loc, scale) -> TanhNormal squashed into the action bounds, action [B, A].
    Both write `action_log_prob`; the critic writes `state_value` [B, 1].
    """
    from tensordict.nn import NormalParamExtractor
    from torchrl.modules import OneHotCategorical, TanhNormal

    from banyan.rl.modules import DirectModule, DirectProbabilisticActor, DirectValueOperator

    n_act = action_spec.shape[-1]
    if continuous:
        net = nn.Sequential(build_net(kind, obs_dim, 2 * n_act, cfg, head_std=0.01),
                            NormalParamExtractor(scale_mapping="biased_softplus_1.0"))
        module = DirectModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
        low, high = action_spec.space.low, action_spec.space.high
        actor = DirectProbabilisticActor(module, in_keys=["loc", "scale"], spec=action_spec,
                                         distribution_class=TanhNormal, distribution_kwargs={"low": low, "high": high},
                                         return_log_prob=True)
    else:
        module = DirectModule(build_net(kind, obs_dim, n_act, cfg, head_std=0.01),
                                  in_keys=["observation"], out_keys=["logits"])
        actor = DirectProbabilisticActor(module, in_keys=["logits"], spec=action_spec,
                                         distribution_class=OneHotCategorical, return_log_prob=True)
    critic = DirectValueOperator(build_net(kind, obs_dim, 1, cfg, head_std=1.0), in_keys=["observation"])
    return actor, critic


def make_qnet(kind: str, cfg: NetConfig, obs_dim: int, action_spec):
    """Q-network for DQN: observation -> `action_value` [B, n] -> greedy one-hot `action`."""
    from torchrl.modules import QValueActor

    net = build_net(kind, obs_dim, action_spec.shape[-1], cfg, head_std=1.0)
    return QValueActor(net, in_keys=["observation"], spec=action_spec)
