"""Batched generation with the KV cache: many prompts at once, each row stopping on its own.

    generate_batch(model, prompts, max_new_tokens, stop_ids, ...) -> Generation

Rows are grouped by prompt length (GRPO's G completions of one prompt always share it): each group
is prefilled once into one KVCache [rows, ...] and decoded one token per step for all its rows. A
row ends at its first token in `stop_ids` (kept in its output: it is the end-of-turn the policy
is trained to emit) or at the length cap; a finished row keeps being fed (its next inputs are
ignored) until every row of its group is done, so the rows stay independent of each other and
equal to generating them one by one. `use_cache=False` recomputes the whole prefix each step (the
baseline of `generation_speed`).

    generation_speed(model, rows, prompt_len, new_tokens) -> {tokens_per_s with and without the
        KV cache at the same batch, their ratio}  (JSON-able; random prompts, greedy, no stops)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from banyan.errors import BanyanError
from banyan.model.common import sample_logits


@dataclass
class Generation:
    tokens: list[list[int]]  # completion ids of each row (its stop token included when it stopped)
    stopped: list[bool]      # True: ended at a stop id; False: at the length cap


def _group_by_length(prompts: list[list[int]]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    return groups


def _sampled(model, x: torch.Tensor, n_new: int, temperature: float, top_k, top_p, generator,
             use_cache: bool) -> Iterator[torch.Tensor]:
    """Next tokens [B] of every row of x [B, T], one per step: through the KV cache (the model's own
    prefill + stream) or, as the baseline, by re-running the whole prefix each step."""
    if use_cache:
        cache = model.make_cache(x.size(0), x.size(1) + n_new, device=x.device)
        yield from model.stream(model.prefill(x, cache), cache, x.size(1), n_new, temperature, top_k, top_p, generator)
        return
    seq = x
    for _ in range(n_new):
        nxt = sample_logits(model(seq)[:, -1], temperature, top_k, top_p, generator)
        yield nxt
        seq = torch.cat([seq, nxt[:, None]], dim=1)


@torch.no_grad()
def _decode_group(model, x: torch.Tensor, n_new: int, stop: torch.Tensor, temperature: float, top_k, top_p,
                  generator, use_cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, T] -> (tokens [B, n] with n <= n_new, lengths [B]: tokens up to and including the first stop)."""
    B = x.size(0)
    out, done = [], torch.zeros(B, dtype=torch.bool, device=x.device)
    lengths = torch.full((B,), n_new, dtype=torch.long, device=x.device)
    for step, nxt in enumerate(_sampled(model, x, n_new, temperature, top_k, top_p, generator, use_cache)):
        out.append(nxt)
        hit = torch.isin(nxt, stop) & ~done
        lengths = torch.where(hit, torch.full_like(lengths, step + 1), lengths)
        done |= hit
        if bool(done.all()):
            break  # the generator stops too: no forward pass for a token nobody reads
    return torch.stack(out, dim=1), lengths


@torch.no_grad()
def generate_batch(model, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int] | tuple = (),
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   generator: torch.Generator | None = None, use_cache: bool = True,
                   device: torch.device | str | None = None) -> Generation:
    """Completions of every prompt (lists of ids); the model runs in eval mode and its mode is restored.

    The cap is min(max_new_tokens, model.max_seq_len - len(prompt)); a prompt that leaves no room is a
    BanyanError. With a generator the draws are reproducible for the same prompts in the same order."""
    if max_new_tokens < 1:
        raise BanyanError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ctx = model.config.max_seq_len
    for i, p in enumerate(prompts):
        if not p or len(p) >= ctx:
            raise BanyanError(f"prompt {i} has {len(p)} tokens; it needs 1..{ctx - 1} to leave room in the "
                              f"model's context (model.max_seq_len = {ctx})")
    device = device if device is not None else model.output_weight().device
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    tokens: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for T, rows in _group_by_length(prompts).items():
            x = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)
            out, lengths = _decode_group(model, x, min(max_new_tokens, ctx - T), stop, temperature, top_k, top_p,
                                         generator, use_cache)
            for j, i in enumerate(rows):
                n = int(lengths[j])
                tokens[i] = out[j, :n].tolist()
                stopped[i] = bool(n and stop.numel() and int(out[j, n - 1]) in stop_ids)
    finally:
        model.train(was_training)
    return Generation(tokens, stopped)


def generation_speed(model, rows: int = 8, prompt_len: int = 16, new_tokens: int = 64, repeats: int = 2,
                     seed: int = 0) -> dict:
    """Decode tokens/s at batch `rows` with the KV cache and with full re-forward each step (best of repeats)."""
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    prompts = torch.randint(0, V, (rows, prompt_len), generator=g).tolist()
    new_tokens = min(new_tokens, model.config.max_seq_len - prompt_len)
    result = {"rows": rows, "prompt_len": prompt_len, "new_tokens": new_tokens}
    for name, cached in (("kv_cache", True), ("reforward", False)):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            generate_batch(model, prompts, new_tokens, (), temperature=0.0, use_cache=cached)
            best = min(best, time.perf_counter() - t0)
        result[f"{name}_tokens_per_s"] = rows * new_tokens / best
    result["ratio"] = result["kv_cache_tokens_per_s"] / result["reforward_tokens_per_s"]
    return result
