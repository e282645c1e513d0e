"""GRPO rollouts: rows of prompt + completion ids with their advantage and stored log-probs, as batches.

A rollout is what one optimizer step (or grpo.ppo_epochs steps) of `banyan grpo` trains on, on one
rank: prompts_per_step prompts x group_size completions. Each row is

    {"ids": prompt + completion ids, "prompt_len": int, "adv": float,
     "old": [log p_old of each completion token] | None,   (ppo_epochs > 1: the policy at rollout time)
     "ref": [log p_ref of each completion token] | None}   (beta > 0: the frozen reference)

plain lists, so a rollout reused by several updates goes into the Task's checkpoint state as JSON
(fp32 values survive the round trip through Python floats exactly) and resuming mid-way is exact.

collate(rows) -> the batch the loss reads, with next-token alignment (position t predicts t+1):

    input_ids [R, L]   ids[:-1], right-padded with pad_id       L = longest row - 1
    labels    [R, L]   ids[1:] on completion positions, IGNORE on the prompt and the padding
    adv       [R]      the row's advantage
    old_logp, ref_logp [R, L]  the stored per-token values on completion positions (0 elsewhere)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from banyan.train.task import IGNORE, Batch


def collate(rows: list[dict], pad_id: int) -> Batch:
    """The loss's batch of rollout rows (see the module docstring)."""
    R, L = len(rows), max(len(r["ids"]) for r in rows) - 1
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    labels = torch.full((R, L), IGNORE, dtype=torch.long)
    old, ref = torch.zeros(R, L), torch.zeros(R, L)
    for i, r in enumerate(rows):
        ids, p = r["ids"], r["prompt_len"]
        n = len(ids) - 1
        input_ids[i, :n] = torch.tensor(ids[:-1])
        labels[i, p - 1:n] = torch.tensor(ids[p:])
        for key, dst in (("old", old), ("ref", ref)):
            if r.get(key) is not None:
                dst[i, p - 1:n] = torch.tensor(r[key], dtype=torch.float32)
    adv = torch.tensor([float(r["adv"]) for r in rows], dtype=torch.float32)
    return {"input_ids": input_ids, "labels": labels, "adv": adv, "old_logp": old, "ref_logp": ref}


def token_logps(model: nn.Module, batch: Batch, with_entropy: bool = False, temperature: float = 1.0):
    """(log p of each label [R, L] fp32, 0 where IGNORE; entropy of each position's distribution [R, L] or None).

    `temperature`: the distribution the rollouts were sampled from, softmax(logits / T), so the policy
    gradient, the PPO ratio and the KL are those of the sampling policy (as TRL's GRPOTrainer does)."""
    logits = model(batch["input_ids"]).float()  # [R, L, V]
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    labels = batch["labels"]
    tok = logp_all.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    tok = torch.where(labels != IGNORE, tok, torch.zeros_like(tok))
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)
    return tok, entropy


@torch.no_grad()
def store_logps(model: nn.Module, rows: list[dict], pad_id: int, key: str, micro_batch: int, device,
                autocast, temperature: float = 1.0) -> None:
    """Fill rows[i][key] with the completion tokens' log-probs under `model` (no grad), micro_batch rows at a time."""
    import contextlib

    for lo in range(0, len(rows), micro_batch):
        chunk = rows[lo:lo + micro_batch]
        b = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        with autocast or contextlib.nullcontext():
            logp, _ = token_logps(model, b, temperature=temperature)
        logp = logp.float().cpu()
        for i, r in enumerate(chunk):
            p, n = r["prompt_len"], len(r["ids"]) - 1
            r[key] = logp[i, p - 1:n].tolist()


def group_stats(rewards: torch.Tensor, lengths: list[int], stopped: list[bool]) -> dict[str, float]:
    """Per-rollout figures: reward mean / std, share of groups whose rewards are all equal (zero
    advantage: no learning signal), mean completion length, share of completions that ended a turn."""
    r = rewards.double()
    equal = (r.max(dim=1).values - r.min(dim=1).values).abs() < 1e-12
    return {"reward_mean": float(r.mean()), "reward_std": float(r.std(unbiased=False)),
            "frac_groups_equal": float(equal.double().mean()),
            "completion_len": sum(lengths) / max(len(lengths), 1),
            "frac_stopped": sum(stopped) / max(len(stopped), 1)}
