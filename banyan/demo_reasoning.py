"""`make demo-reasoning` / `banyan demo reasoning`: the whole post-training path on a verifiable task.

    [1/4] a corpus of arithmetic text from the task's TRAINING problems, each with a short worked
          solution ("What is 47 + 85? 7+5=12, 4+8+1=13, so 132"), character-level shards
    [2/4] pretrain a small Llama on it
    [3/4] SFT: the same kind of problems as chat turns (user: "What is 47 + 85?"); the assistant
          shows the working on half of them and answers the other half directly ("so 132"), as chat
          data written by people often does (--direct: that share)
    [4/4] GRPO with the task's exact-match verifier as the reward

and greedy pass@1 on held-out problems after SFT and after GRPO, with the share of greedy replies that
show the working. The SFT model answers directly when greedy (one "s" outweighs ten possible first
digits) and a 4-layer model adds two-digit numbers in one go badly; sampled, about half its replies
work it out, and those are right far more often. That is the signal GRPO needs: it learns from its own
graded samples that working it out pays, and the greedy reply switches. Measured (2-digit +, 500
held-out, seeds 0 / 1 / 2): 42.6 / 31.2 / 28.0% after SFT -> 91.8 / 90.6 / 48.6% after GRPO; with
--direct 0 (every SFT answer worked) SFT alone reaches ~69% and GRPO adds ~3 points. Held-out problems are those whose
sha256 falls in banyan.data.reasoning's held-out tenth: no training stage ever sees one (the corpus,
the SFT conversations and the GRPO rollouts all draw from the training split only).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

from banyan.config import load_config

MAX_NEW = 48  # characters of a reply: the longest worked solution of 3-digit operands is ~45


def _columns(a: int, b: int, op: str) -> list[str]:
    """Fixed-width column steps of a + b or a - b (a >= b; a + b: a has the more digits) from the
    units up, the digit of `a` first, the shorter operand zero-padded and the carry / borrow always
    written: "7+5+0=12" carries 1 into "4+8+1=13"; a sum is always two digits ("2+3+0=05").
    A borrowing column shows the borrowed ten: "13-9-0=4" pays 1 back in "05-2-1=2".
    Every step has the same length, so each digit the model reads sits at a fixed offset from where
    it writes. Measured (500 / 200 held-out, greedy): free-width steps "7+5=12,
    4+8+1=13" left a 4-layer width-64 model at 1-3% on 2-digit sums, a width-128 one at 61% on 1-2
    digits; this form reached 99% on 1-2 digits with width 64 and 600 pretraining steps."""
    n = max(len(str(a)), len(str(b)))
    da, db = str(a).zfill(n)[::-1], str(b).zfill(n)[::-1]
    steps, carry = [], 0
    for x, y in zip(map(int, da), map(int, db)):
        if op == "+":
            total = x + y + carry
            steps.append(f"{x}+{y}+{carry}={total:02d}")
            carry = total // 10
        else:
            borrow = int(x - y - carry < 0)
            steps.append(f"{x + 10 * borrow:02d}-{y}-{carry}={x + 10 * borrow - y - carry}")
            carry = borrow
    return steps


def worked(problem) -> str:
    """A short worked solution ending in the answer (the task grades the last integer), e.g. for
    "What is 47 + 85?": "7+5+0=12, 4+8+1=13, so 132". Multiplication is answered directly."""
    a, b, op = problem.meta["a"], problem.meta["b"], problem.meta["op"]
    if op == "*":
        return problem.answer
    if op == "-" and a < b:  # a - b = -(b - a)
        return f"{b}-{a}: " + ", ".join(_columns(b, a, "-")) + f", so {problem.answer}"
    big, small = (a, b) if op == "-" or len(str(a)) >= len(str(b)) else (b, a)
    return ", ".join(_columns(big, small, op)) + f", so {problem.answer}"


def write_corpus(task, folder: Path, docs: int, per_doc: int, offset: int = 0) -> Path:
    """jsonl of `docs` documents, each `per_doc` training problems with their worked solutions, one per line."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "arithmetic.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for d in range(docs):
            lines = [task.train_problem(offset + d * per_doc + i) for i in range(per_doc)]
            f.write(json.dumps({"text": "\n".join(f"{p.prompt} {worked(p)}" for p in lines)}) + "\n")
    return path


def write_chats(task, path: Path, n: int, offset: int, direct: float = 0.0) -> Path:
    """jsonl of n one-turn conversations on training problems offset.. (user question, assistant answer):
    a share `direct` of the answers (drawn with a fixed seed) is "so ANSWER", the rest the worked solution."""
    rng = random.Random(offset)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            p = task.train_problem(offset + i)
            answer = f"so {p.answer}" if rng.random() < direct else worked(p)
            f.write(json.dumps({"messages": [{"role": "user", "content": p.prompt},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    return path


def held_out(run: Path, task, n: int) -> tuple[float, float]:
    """(greedy pass@1, share of greedy replies that show the working) of a run's latest checkpoint on the
    task's first n held-out problems."""
    import torch

    from banyan.eval.reasoning import greedy_replies
    from banyan.eval.run import load_eval_model

    em = load_eval_model(run, torch.device("cpu"))
    problems = task.held_out(n)
    replies = greedy_replies(em.model, em.tok, em.chat_template, problems, MAX_NEW)
    passed = sum(task.score(p, r) >= 1.0 for p, r in zip(problems, replies))
    return passed / len(problems), sum("=" in r for r in replies) / len(problems)


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(prog="banyan demo reasoning", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a ~1 minute version: tiny counts")
    ap.add_argument("--out", default="runs/reasoning", help="folder for the data and the three runs (replaced)")
    ap.add_argument("--digits", type=int, default=2, help="digits per operand (at most)")
    ap.add_argument("--min_digits", type=int, default=1, help="digits per operand (at least; = --digits: fixed width)")
    ap.add_argument("--ops", default="+", help="operators")
    ap.add_argument("--seed", type=int, default=0,
                    help="the task's seed (which problems are held out, the corpus, the chats) and each stage's (1337 + seed)")
    ap.add_argument("--held_out", type=int, default=500, help="held-out problems scored after SFT and GRPO")
    ap.add_argument("--layers", type=int, default=4, help="transformer blocks of the model")
    ap.add_argument("--width", type=int, default=64, help="d_model (4 heads, d_ff = 3 x width)")
    ap.add_argument("--pretrain_steps", type=int, default=600)
    ap.add_argument("--sft_steps", type=int, default=200)
    ap.add_argument("--direct", type=float, default=0.5,
                    help="share of SFT answers given directly, without the working (0: all worked)")
    ap.add_argument("--grpo_steps", type=int, default=150)
    # measured (seeds 0 / 1 / 2; SFT 42.6 / 31.2 / 28.0%): 150 steps at lr 5e-5 with 10 warm-up steps ->
    # 91.8 / 90.6 / 48.6%; 100 steps at 1e-4 without warm-up -> 86.2 / 88.8 / 28.2% (seed 2's reward fell
    # from 0.28 to 0.08 in the first steps: Adam's first steps are sign-like, lr on every weight).
    # lr 3e-4 and more collapse the reward to 0 within a step or two.
    ap.add_argument("--grpo_lr", type=float, default=5e-5)
    ap.add_argument("--grpo_warmup", type=int, default=10, help="GRPO learning-rate warm-up steps")
    ap.add_argument("--prompts", type=int, default=8, help="GRPO prompts per step")
    ap.add_argument("--group", type=int, default=8, help="GRPO completions per prompt")
    ap.add_argument("--temperature", type=float, default=1.0, help="GRPO sampling temperature")
    ap.add_argument("--advantage", default="grpo", choices=["grpo", "dr_grpo", "rloo"], help="GRPO advantage")
    ap.add_argument("--eval_prompts", type=int, default=64,
                    help="held-out problems scored during GRPO (the pass@1 curve of the PNG; 0: none)")
    args = ap.parse_args(argv)
    if args.quick:
        args.held_out, args.pretrain_steps, args.sft_steps, args.grpo_steps, args.eval_prompts = 40, 20, 10, 3, 8
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    from banyan.data.reasoning import ArithmeticTask

    task = ArithmeticTask(seed=args.seed, max_digits=args.digits, ops=args.ops, min_digits=args.min_digits)
    root = Path(args.out)
    if root.exists():
        shutil.rmtree(root)  # the demo's own folder
    runs = {name: root / name for name in ("pretrain", "sft", "grpo")}
    print(f"[1/4] writing arithmetic text ({args.digits}-digit {' '.join(args.ops)}) from training problems ...")
    corpus = write_corpus(task, root / "corpus", docs=400 if args.quick else 2000, per_doc=20)
    from banyan.data.prepare import PrepareConfig, prepare

    prepare(PrepareConfig(source=str(corpus), out=str(root / "data"), tokenizer="char", workers=1, val_fraction=0.1,
                          progress=False))
    clock = {}
    t = time.time()
    pretrain(root / "data", runs["pretrain"], args)
    clock["pretrain"], t = time.time() - t, time.time()
    chats = write_chats(task, root / "chats.jsonl", 20000, offset=10**6, direct=args.direct)
    sft(runs["pretrain"], runs["sft"], chats, args)
    clock["sft"], t = time.time() - t, time.time()
    after_sft = held_out(runs["sft"], task, args.held_out)
    print(f"held-out pass@1 after SFT: {after_sft[0]:.1%} on {args.held_out} problems "
          f"({after_sft[1]:.0%} of the replies show the working)")
    clock["eval"], t = time.time() - t, time.time()
    summary = grpo(runs["sft"], runs["grpo"], args)
    clock["grpo"], t = time.time() - t, time.time()
    after_grpo = held_out(runs["grpo"], task, args.held_out)
    clock["eval"] += time.time() - t
    report(args, after_sft, after_grpo, summary, clock, time.time() - t0)
    return 0


def report(args, after_sft: tuple, after_grpo: tuple, summary: dict, clock: dict, total: float) -> None:
    """The final table: held-out greedy pass@1 (and working shown) after each stage, GRPO figures, time per stage."""
    print("-" * 64)
    print(f"held-out greedy pass@1 on {args.held_out} {args.digits}-digit {' '.join(args.ops)} problems "
          f"(never seen in training)")
    print(f"  after SFT    {after_sft[0]:6.1%}   (working shown in {after_sft[1]:4.0%} of the replies)")
    print(f"  after GRPO   {after_grpo[0]:6.1%}   (working shown in {after_grpo[1]:4.0%}; "
          f"{(after_grpo[0] - after_sft[0]) * 100:+.1f} points)")
    print(f"GRPO: {summary.get('step', 0)} steps, {summary.get('skipped_no_signal', 0)} skipped without signal, "
          f"{summary.get('samples_per_s', 0):.1f} completions/s; curves: {summary.get('grpo_plot', '-')}")
    print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in clock.items()) + f"; total {total:.0f}s")


def stage_train(args) -> dict:
    """train.* settings every stage shares: CPU, fp32 (the measured figures), the stage seed from --seed."""
    return {"device": "cpu", "dtype": "fp32", "seed": 1337 + args.seed}


def pretrain(data: Path, out: Path, args) -> None:
    from banyan.config import RunConfig
    from banyan.train.pretrain import train

    cfg = load_config(RunConfig, overrides={
        "data": {"path": str(data)}, "out": str(out),
        "model": {"arch": "llama", "n_layer": args.layers, "d_model": args.width, "n_head": 4, "n_kv_head": 4,
                  "d_ff": 3 * args.width, "max_seq_len": 128},
        "train": {"max_steps": args.pretrain_steps, "seq_len": 128, "micro_batch": 32, "eval_every": 0,
                  "eval_batches": 4,
                  "log_every": 25, **stage_train(args)},
        "optim": {"name": "adamw", "lr": 3e-3, "warmup_steps": 20}, "checkpoint": {"every": 0},
        "log": {"tensorboard": False}})
    print(f"[2/4] pretraining a {cfg.model.n_layer}-layer, width-{cfg.model.d_model} Llama "
          f"for {args.pretrain_steps} steps ...")
    train(cfg)


def sft(src: Path, out: Path, chats: Path, args) -> None:
    from banyan.train.sft import SFTConfig, train

    cfg = load_config(SFTConfig, overrides={
        "init": str(src), "out": str(out), "sft": {"data": str(chats), "end_prompts": 0},
        "train": {"max_steps": args.sft_steps, "seq_len": 128, "micro_batch": 32, "eval_every": 0, "eval_batches": 4,
                  "log_every": 25, **stage_train(args)},
        "optim": {"name": "adamw", "lr": 1e-3, "warmup_steps": 10}, "checkpoint": {"every": 0},
        "log": {"tensorboard": False}})
    print(f"[3/4] SFT on question/answer chats for {args.sft_steps} steps ({args.direct:.0%} answered directly) ...")
    train(cfg)


def grpo(src: Path, out: Path, args) -> dict:
    from banyan.train.grpo import GRPOConfig, train

    cfg = load_config(GRPOConfig, overrides={
        "init": str(src), "out": str(out),
        "grpo": {"task": "arithmetic", "max_digits": args.digits, "min_digits": args.min_digits, "ops": args.ops,
                 "prompts_per_step": args.prompts, "group_size": args.group, "max_new_tokens": MAX_NEW,
                 "temperature": args.temperature, "advantage": args.advantage, "beta": 0.0,
                 # the PNG's pass@1 curve: greedy on the first held-out problems, 4 times in the run
                 "eval_prompts": args.eval_prompts, "pass_k": 4},
        "train": {"max_steps": args.grpo_steps, "seq_len": 128, "micro_batch": args.prompts * args.group,
                  "eval_every": max(args.grpo_steps // 4, 1) if args.eval_prompts else 0,
                  "log_every": 5, **stage_train(args)},
        # no weight decay: a 0.2M model pulled towards 0 for a few dozen RL steps only loses what SFT taught
        "optim": {"name": "adamw", "lr": args.grpo_lr, "warmup_steps": args.grpo_warmup, "weight_decay": 0.0},
        "checkpoint": {"every": 0}, "log": {"tensorboard": False}})
    print(f"[4/4] GRPO with the exact-match verifier for {args.grpo_steps} steps "
          f"({cfg.grpo.prompts_per_step} prompts x {cfg.grpo.group_size} completions each) ...")
    return train(cfg)


if __name__ == "__main__":
    raise SystemExit(main())
