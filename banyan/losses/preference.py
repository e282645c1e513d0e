"""Preference losses on sequence log-probabilities: DPO (sigmoid), IPO and reference-free SimPO.

Every function takes per-pair tensors [P] (P pairs) and returns per-pair losses [P] plus the
implicit rewards [P] of the chosen and rejected responses, so a Task can sum them over pairs
(the Trainer divides by the global pair count). Inputs:

    pc, pr      policy log p(y | x) of the chosen / rejected response: sum over response tokens
    rc, rr      the frozen reference model's same sums (DPO, IPO)
    lc, lr      response lengths in tokens (SimPO's length normalisation, the NLL term)

sigmoid  (DPO, Rafailov et al. 2023, eq. 7; with label smoothing eps the conservative cDPO of
         Mitchell 2023, eq. 3, as in TRL's DPOTrainer `loss_type="sigmoid"`):
             z = beta * ((pc - rc) - (pr - rr))
             loss = -(1 - eps) * log sigmoid(z) - eps * log sigmoid(-z)
ipo      (Azar et al. 2023, "A General Theoretical Paradigm...", eq. 17; TRL `loss_type="ipo"`):
             h = (pc - rc) - (pr - rr);  loss = (h - 1 / (2 * beta))^2
simpo    (Meng et al. 2024, eq. 6; no reference model): with length-averaged log-probs
             z = beta * (pc / lc - pr / lr) - gamma;  loss = -(1 - eps) log sigmoid(z) - eps log sigmoid(-z)

Rewards: beta * (policy - reference) for sigmoid and ipo (DPO's implicit reward, eq. 5), and
beta * (average log-prob) for simpo (its implicit reward, eq. 4). The optional NLL term (the RPO
variant, Pang et al. 2024; TRL `rpo_alpha`) adds `nll_alpha * (-pc / lc)`: the mean next-token
cross-entropy of the chosen response, per pair.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "simpo")
REFERENCE_FREE = ("simpo",)


class PreferenceLoss(NamedTuple):
    """Per-pair losses [P] and implicit rewards [P] (rewards are detached)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def _smoothed_logsigmoid(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """-(1 - eps) log sigmoid(z) - eps log sigmoid(-z): BCE against the label 1 - eps."""
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def dpo_sigmoid(pc, pr, rc, rr, beta: float = 0.1, label_smoothing: float = 0.0) -> PreferenceLoss:
    """DPO / cDPO per-pair loss (see module docstring)."""
    chosen, rejected = pc - rc, pr - rr  # log-ratios to the reference [P]
    losses = _smoothed_logsigmoid(beta * (chosen - rejected), label_smoothing)
    return PreferenceLoss(losses, (beta * chosen).detach(), (beta * rejected).detach())


def ipo(pc, pr, rc, rr, beta: float = 0.1) -> PreferenceLoss:
    """IPO per-pair loss: squared distance of the log-ratio margin to 1 / (2 beta)."""
    chosen, rejected = pc - rc, pr - rr
    losses = (chosen - rejected - 1.0 / (2.0 * beta)) ** 2
    return PreferenceLoss(losses, (beta * chosen).detach(), (beta * rejected).detach())


def simpo(pc, pr, lc, lr, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0) -> PreferenceLoss:
    """SimPO per-pair loss: length-normalised log-probs, target margin gamma, no reference."""
    chosen, rejected = beta * pc / lc.clamp(min=1), beta * pr / lr.clamp(min=1)
    losses = _smoothed_logsigmoid(chosen - rejected - gamma, label_smoothing)
    return PreferenceLoss(losses, chosen.detach(), rejected.detach())


def preference_loss(loss_type: str, pc, pr, lc, lr, rc=None, rr=None, *, beta: float, label_smoothing: float = 0.0,
                    gamma: float = 0.5, nll_alpha: float = 0.0) -> PreferenceLoss:
    """The loss `loss_type` (one of LOSS_TYPES) per pair, plus `nll_alpha` x the chosen response's mean NLL."""
    if loss_type == "simpo":
        out = simpo(pc, pr, lc, lr, beta, gamma, label_smoothing)
    elif rc is None or rr is None:
        raise ValueError(f"preference loss {loss_type!r} needs reference log-probs")
    elif loss_type == "sigmoid":
        out = dpo_sigmoid(pc, pr, rc, rr, beta, label_smoothing)
    elif loss_type == "ipo":
        out = ipo(pc, pr, rc, rr, beta)
    else:
        raise ValueError(f"unknown preference loss {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    if nll_alpha:
        out = out._replace(losses=out.losses + nll_alpha * (-pc / lc.clamp(min=1)))
    return out
