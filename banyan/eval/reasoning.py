"""pass@1 (greedy) and pass@k (sampled) of a chat model on a reasoning task's held-out problems.

    replies(model, tok, ids, max_new_tokens, temperature, ...) -> the reply text to each prompt (ids)
    greedy_replies(model, tok, template, problems, ...)     -> the greedy reply text of each problem
    pass_sums(model, tok, template, task, problems, k, ...)  -> sums {n, pass1, passk, score} (one process's share)
    evaluate_reasoning(model, tok, template, task, n, k, ...) -> {pass_at_1, pass_at_k, mean_score, n}
    evaluate_checkpoint("runs/grpo", "arithmetic", n=500, k=4) the same from any run, checkpoint or HF folder

Each problem is asked as one user turn in the model's chat template; the reply is generated with the
KV cache (banyan.model.generate) until <|end|> / <|eos|> or max_new_tokens, and graded by the task's
verifier. A problem passes when its grade is 1. pass@k is the unbiased estimator of Chen et al.
(2021) with n = k samples per problem at `temperature` (i.e. whether any of the k samples passes).
"""

from __future__ import annotations

import torch

from banyan.data.chat import Turn
from banyan.losses.grpo import pass_at_k


def prompt_ids(tok, template: str, problem_text: str, system_prompt: str = "") -> list[int]:
    """The chat-template ids asking `problem_text` as a user turn, ending with the assistant header."""
    from banyan.data.chat_template import encode_prompt

    turns = ([Turn("system", system_prompt)] if system_prompt else []) + [Turn("user", problem_text)]
    return encode_prompt(tok, template, turns)


def stop_ids(tok) -> list[int]:
    """End-of-turn and end-of-document ids: a reply stops at either."""
    return sorted({tok.special_id("<|end|>"), tok.eos_id})


def completion_text(tok, ids: list[int]) -> str:
    """The reply's text without its stop token."""
    stops = set(stop_ids(tok))
    return tok.decode([t for t in ids if t not in stops])


def replies(model, tok, ids: list[list[int]], max_new_tokens: int, temperature: float = 0.0, generator=None,
            device=None) -> list[str]:
    """The reply text (stop token dropped) to each prompt of chat-template ids; temperature 0 is greedy."""
    from banyan.model.generate import generate_batch

    gen = generate_batch(model, ids, max_new_tokens, stop_ids(tok), temperature=temperature, generator=generator,
                         device=device)
    return [completion_text(tok, t) for t in gen.tokens]


@torch.no_grad()
def greedy_replies(model, tok, template: str, problems, max_new_tokens: int = 32, system_prompt: str = "",
                   device=None) -> list[str]:
    """The greedy (temperature 0) reply of each problem, without its stop token."""
    ids = [prompt_ids(tok, template, p.prompt, system_prompt) for p in problems]
    return replies(model, tok, ids, max_new_tokens, device=device)


@torch.no_grad()
def pass_sums(model, tok, template: str, task, problems, k: int = 4, temperature: float = 1.0,
              max_new_tokens: int = 32, seed: int = 0, system_prompt: str = "", autocast=None,
              device=None) -> dict[str, float]:
    """Sums over `problems` of greedy pass, pass@k and greedy grade, plus their count."""
    import contextlib

    if not problems:
        return {"n": 0.0, "pass1": 0.0, "passk": 0.0, "score": 0.0}
    ids = [prompt_ids(tok, template, p.prompt, system_prompt) for p in problems]
    with autocast or contextlib.nullcontext():
        greedy = replies(model, tok, ids, max_new_tokens, device=device)
        g = torch.Generator(device=device or "cpu").manual_seed(seed)
        sampled = replies(model, tok, [p for p in ids for _ in range(k)], max_new_tokens, temperature, g, device)
    scores = [task.score(p, text) for p, text in zip(problems, greedy)]
    passk = 0.0
    for i, p in enumerate(problems):
        c = sum(task.score(p, text) >= 1.0 for text in sampled[i * k:(i + 1) * k])
        passk += pass_at_k(k, c, k)
    return {"n": float(len(problems)), "pass1": float(sum(s >= 1.0 for s in scores)), "passk": passk,
            "score": float(sum(scores))}


def sampled_key(k: int) -> str:
    """The name of pass@k from k samples: with k = 1 a sampled pass@1, kept apart from the greedy `pass_at_1`."""
    return f"pass_at_{k}" if k > 1 else "pass_at_1_sampled"


def summarize(sums: dict[str, float], k: int) -> dict[str, float]:
    """pass_at_1 is greedy; pass_at_K comes from K samples (see sampled_key)."""
    n = max(sums["n"], 1.0)
    return {"pass_at_1": sums["pass1"] / n, sampled_key(k): sums["passk"] / n, "mean_score": sums["score"] / n,
            "n": int(sums["n"])}


def evaluate_reasoning(model, tok, template: str, task, n: int = 100, k: int = 4, **kw) -> dict[str, float]:
    """pass@1 / pass@k / mean grade on the task's first n held-out problems (one process)."""
    return summarize(pass_sums(model, tok, template, task, task.held_out(n), k, **kw), k)


def evaluate_checkpoint(path, task: str = "arithmetic", n: int = 100, k: int = 4, device: str = "cpu",
                        seed: int = 0, **kw) -> dict[str, float]:
    """evaluate_reasoning on a run, checkpoint or HF folder (its weights, tokenizer and chat template, loaded
    as `banyan eval` loads them). `task` is a name for banyan.data.reasoning.load_task (built with seed
    `seed`) or a ReasoningTask."""
    from banyan.data.reasoning import load_task
    from banyan.errors import DataError
    from banyan.eval.run import load_eval_model

    em = load_eval_model(path, torch.device(device))
    if em.chat_template is None:
        raise DataError(f"{path}: no chat template (tokenizer_config.json); reasoning problems are asked as chat "
                        "turns, so evaluate an SFT'd chat model")
    t = load_task(task, seed) if isinstance(task, str) else task
    return evaluate_reasoning(em.model, em.tok, em.chat_template, t, n, k, device=torch.device(device), **kw)
