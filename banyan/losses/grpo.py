"""GRPO pieces as pure tensor functions: group advantages, per-token KL estimators, the clipped surrogate.

Rewards come in groups: G completions of one prompt, a tensor [P, G] (P prompts). Advantages:

    grpo     (Shao et al. 2024, DeepSeekMath eq. 3):   A_i = (r_i - mean(r)) / (std(r) + eps)
             std is the sample standard deviation (unbiased, /(G-1)), as TRL's GRPOTrainer uses
             (torch.std); a group of one has std 0 and advantage 0
    dr_grpo  (Liu et al. 2025, "Understanding R1-Zero-Like Training"):  A_i = r_i - mean(r); the loss
             is also summed over tokens and divided by a constant (no per-sequence length
             normalisation: the Task's count is rows * max_new_tokens)
    rloo     (Ahmadian et al. 2024; Kool et al. 2019): A_i = r_i - mean_{j != i} r_j
                                                         = G / (G - 1) * (r_i - mean(r))

Per-token KL of the policy to the frozen reference, from sampled tokens (Schulman 2020,
"Approximating KL divergence"), with d = logp_ref - logp:

    k1 = -d = logp - logp_ref                 unbiased, may be negative
    k3 = exp(d) - d - 1                       unbiased on-policy, always >= 0 (GRPO's choice)

PPO clipped surrogate (Schulman et al. 2017, eq. 7), per token, to be minimised, with
ratio = exp(logp - logp_old) and an asymmetric clip range [1 - eps_low, 1 + eps_high] (DAPO):

    loss_t = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)

With one update per rollout batch logp_old = logp.detach(): ratio is 1 in value and the gradient
is the plain policy gradient A * grad logp.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

ADVANTAGES = ("grpo", "dr_grpo", "rloo")
KL_ESTIMATORS = ("k1", "k3")


def group_advantages(rewards: torch.Tensor, norm: Literal["grpo", "dr_grpo", "rloo"] = "grpo",
                     eps: float = 1e-4) -> torch.Tensor:
    """Advantages [P, G] of rewards [P, G] (a row is one prompt's group); see the module docstring."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [prompts, group], got shape {tuple(rewards.shape)}")
    r = rewards.double()
    G = r.size(1)
    centred = r - r.mean(dim=1, keepdim=True)
    if norm == "grpo":
        std = r.std(dim=1, keepdim=True) if G > 1 else torch.zeros_like(r[:, :1])
        out = centred / (std + eps)
    elif norm == "dr_grpo":
        out = centred
    elif norm == "rloo":
        out = centred * (G / (G - 1)) if G > 1 else torch.zeros_like(r)
    else:
        raise ValueError(f"unknown advantage normalisation {norm!r}; expected one of {ADVANTAGES}")
    # a group of equal rewards has no signal: exactly 0 (the float mean of 0.1 x 3 is not exactly 0.1)
    out = torch.where((r.max(dim=1, keepdim=True).values == r.min(dim=1, keepdim=True).values), 0.0, out)
    return out.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def kl_per_token(logp: torch.Tensor, logp_ref: torch.Tensor, kind: Literal["k1", "k3"] = "k3") -> torch.Tensor:
    """Per-token KL estimate (same shape as logp) of the sampled tokens' policy vs reference log-probs."""
    d = logp_ref - logp
    if kind == "k1":
        return -d
    if kind == "k3":
        return torch.exp(d) - d - 1
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_ESTIMATORS}")


class Surrogate(NamedTuple):
    loss: torch.Tensor      # per-token loss to minimise (same shape as logp)
    ratio: torch.Tensor     # exp(logp - logp_old), detached
    clipped: torch.Tensor   # bool: the clipped branch was taken (the token gets no gradient from it)


def clipped_surrogate(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                      eps_low: float = 0.2, eps_high: float = 0.2) -> Surrogate:
    """PPO's clipped objective per token; advantages broadcast over the token axis ([R, 1] or [R, T])."""
    ratio = torch.exp(logp - logp_old)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    took_clip = clipped < unclipped  # min picked the clipped value
    return Surrogate(-torch.minimum(unclipped, clipped), ratio.detach(), took_clip.detach())


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1): 1 - C(n-c,k)/C(n,k)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):  # prod_{i=n-c+1}^{n} (1 - k/i), numerically stable form
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong
