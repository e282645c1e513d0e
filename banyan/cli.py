"""The `banyan` command: a thin table from verb to function.

Each entry point is `module:function` taking the remaining argv; modules are imported only when
their verb runs, so `banyan --help` is fast and a missing extra (e.g. `rl`) only affects its verbs.
Any `BanyanError` (banyan.errors) becomes one clear line on stderr and exit code 2.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import sys

from banyan.errors import BanyanError
from banyan.runtime import paused_gc

# verb (possibly two words) -> (entry point, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data prepare": ("banyan.data.prepare:main", "Tokenize a corpus (default: embedded Shakespeare) into token shards."),
    "pretrain": ("banyan.train.pretrain:main", "Train a Llama or GPT-2 model from scratch on prepared shards."),
    "sft": ("banyan.train.sft:main", "Supervised fine-tuning on conversations (--init RUN, --sft.data PATH|hf:NAME)."),
    "dpo": ("banyan.train.dpo:main", "Align a chat model on preference pairs (DPO, IPO, SimPO) from --init SFT_RUN."),
    "reward": ("banyan.train.reward:main", "Train a Bradley-Terry reward model on preference pairs from --init SFT_RUN."),
    "grpo": ("banyan.train.grpo:main", "RL on a chat model (GRPO/Dr. GRPO/RLOO) with verifiable, Python or reward-model rewards."),
    "sample": ("banyan.train.sample:main", "Generate text from a checkpoint (KV cache, temperature/top-k/top-p)."),
    "chat": ("banyan.chat:main", "Chat with a checkpoint in its chat template (KV-cached turns, streamed replies)."),
    "bench train": ("banyan.train.bench:main", "Benchmark training throughput (tokens/s, MFU, memory) as JSON."),
    "bench generate": ("banyan.train.bench_generate:main", "Benchmark batched generation: KV cache vs full re-forward tokens/s (JSON)."),
    "bench comm": ("banyan.parallel.bench_comm:main", "Benchmark collectives' bus bandwidth and check their results."),
    "bench rl": ("banyan.rl.bench:main", "Benchmark PPO on CartPole over seeds (steps to solve, samples/s)."),
    "plan": ("banyan.plan:main", "Predict memory and speed of each strategy on given GPUs before training."),
    "export hf": ("banyan.export.hf:main", "Export a run or checkpoint as a Hugging Face transformers folder."),
    "export gguf": ("banyan.export.gguf:main", "Export a Llama run or checkpoint as a GGUF file for llama.cpp."),
    "eval": ("banyan.eval.run:main", "Score a run, checkpoint or HF folder: bpb, HellaSwag/ARC/PIQA, exact match."),
    "push": ("banyan.export.push:main", "Export a run and upload it to the Hugging Face Hub (W&B too with --log.wandb)."),
    "checkpoint consolidate": ("banyan.train.consolidate:main", "Merge a sharded checkpoint into one safetensors file."),
    "demo reasoning": ("banyan.demo_reasoning:main", "Pretrain -> SFT -> GRPO on arithmetic; held-out pass@1 after SFT and GRPO."),
    "rl train": ("banyan.rl.train:main", "Train PPO or DQN on a Gymnasium environment through TorchRL."),
    "rl compare": ("banyan.rl.compare:main", "Run an env x policy x seed grid and tabulate the results."),
    "rl check-env": ("banyan.rl.check_env:main", "Probe an environment for design mistakes and loopholes."),
}


# Verbs whose outputs are all written and closed when their function returns (metrics, TensorBoard, W&B,
# checkpoints, summary, run-folder lock). When banyan is the process (the console script or
# `python -m banyan`), a successful run of one of them exits without the interpreter's teardown, which
# frees torch, torchrl, Gymnasium and matplotlib object by object: 0.9-1.8 s after a ~12 s `rl train` on
# the 2-core box (`python -c "import torch"` alone spends ~0.5 s exiting). atexit handlers still run.
FAST_EXIT = {"rl train", "bench rl"}


def _exit_now(rc: int) -> None:
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def _usage() -> str:
    lines = ["usage: banyan <command> [options]   (each command has --help)", "", "commands:"]
    width = max(len(k) for k in COMMANDS)
    lines += [f"  {k.ljust(width)}  {h}" for k, (_, h) in COMMANDS.items()]
    lines += ["", "Quick start: banyan data prepare --out data/shakespeare && banyan pretrain --out runs/demo"]
    return "\n".join(lines)


def _os_hint(e: OSError) -> str:
    import errno

    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return " (no permission to write there: choose another --out or fix the folder's permissions)"
    if e.errno == errno.EISDIR:
        return " (a folder where a file was expected: give a file name)"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return " (a file is in the way of a folder)"
    return ""


def _resolve(argv: list[str]) -> tuple[str | None, list[str]]:
    for n in (2, 1):
        key = " ".join(argv[:n])
        if len(argv) >= n and key in COMMANDS:
            return key, argv[n:]
    return None, argv


def _no_verb(argv: list[str]) -> int:
    """A group name alone (`banyan rl`): its verbs (exit 0 with -h, else 2); anything else: the closest verb, 2."""
    groups = sorted({k.split()[0] for k in COMMANDS if " " in k})
    if argv[0] in groups:
        subs = [k for k in COMMANDS if k.startswith(argv[0] + " ")]
        print(f"banyan {argv[0]}: choose one of: " + ", ".join(s.split()[1] for s in subs), file=sys.stderr)
        for s in subs:
            print(f"  banyan {s:<24} {COMMANDS[s][1]}", file=sys.stderr)
        return 0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2
    import difflib

    close = difflib.get_close_matches(" ".join(argv[:2]), list(COMMANDS), n=1) or \
        difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
    hint = f" Did you mean 'banyan {close[0]}'?" if close else ""
    print(f"banyan: unknown command '{argv[0]}'.{hint}\n\n{_usage()}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    is_process = argv is None  # called by the console script / python -m banyan, not from Python code
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    verb, rest = _resolve(argv)
    if verb is None:
        return _no_verb(argv)
    module, func = COMMANDS[verb][0].split(":")
    try:
        # a process: no collections while torch & co. load, then they are frozen (banyan.runtime); a Python
        # caller keeps its own collector state (a freeze would also hold its pending garbage cycles)
        with paused_gc() if is_process else contextlib.nullcontext():
            fn = getattr(importlib.import_module(module), func)
    except ModuleNotFoundError as e:
        if (e.name or "").startswith("banyan"):
            raise
        extra = "rl" if verb.startswith("rl") or verb == "bench rl" else "gguf" if e.name == "gguf" else "hf"
        print(f"banyan {verb}: missing dependency '{e.name}'; install with: pip install 'banyan-lm[{extra}]'",
              file=sys.stderr)
        return 2
    try:
        rc = fn(rest)
    except (BanyanError, FileNotFoundError) as e:
        print(f"banyan {verb}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder that cannot be written, a file where a folder belongs, ...: one line
        if not e.strerror:
            raise
        where = f" '{e.filename}'" if e.filename else ""
        print(f"banyan {verb}: error: {e.strerror}{where}" + _os_hint(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"banyan {verb}: interrupted", file=sys.stderr)
        return 130
    except BaseException as e:
        if not hasattr(e, "failures"):  # SystemExit and the like; real bugs keep their traceback
            raise
        # torch.distributed.checkpoint's CheckpointException (a BaseException): a sharded checkpoint failed to load
        from banyan.train.safe_dcp import failure_line

        print(f"banyan {verb}: error: a sharded checkpoint could not be read ({failure_line(e)}); "
              "it may be damaged: copy it again or use an earlier checkpoint", file=sys.stderr)
        return 2
    rc = int(rc or 0)
    # not under a profiler or tracer (cProfile, coverage): they write their output at teardown
    if is_process and rc == 0 and verb in FAST_EXIT and sys.getprofile() is None and sys.gettrace() is None:
        _exit_now(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
