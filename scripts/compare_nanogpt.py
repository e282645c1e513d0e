"""Side by side with nanoGPT at its README CPU configuration: whole-process wall time and val loss, interleaved.

    python scripts/compare_nanogpt.py /path/to/nanoGPT --rounds 3 [--iters 600] [--out /tmp/vs-nanogpt]

You bring a nanoGPT checkout (github.com/karpathy/nanoGPT); nothing of it is copied into banyan. The script
copies it to --out, writes the same 1.1 MB of the embedded Shakespeare text as nanoGPT's shakespeare_char
input.txt and as banyan jsonl documents (char-level on both sides; both hold out the same last 10% of the
characters, see same_held_out_documents), then runs, round by round:

  nanogpt   train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
            --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --dropout=0.0 (README CPU line)
  banyan    banyan pretrain with the same model, batch, optimizer and schedule (one process, torch's threads,
            train.dtype auto: bf16 autocast on a CPU with bf16 matrix units; nanoGPT runs fp32 on CPU)
  banyan-2p the same run as 2 processes x 1 thread (--nproc 2, micro-batch 6 per rank: the same 12 rows)

and prints a table: wall and CPU (user + system) seconds, medians over rounds, the ratios nanoGPT/banyan
(> 1: banyan is faster; compare CPU time on a loaded machine, ideally with OMP_NUM_THREADS=1 for every
side), the val loss at iteration 500 (both evaluate there; nats per character on both sides) and the dtype
each side trained in. JSON goes to --out/compare.json.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

NANO_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
             "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
             "--dropout=0.0", "--warmup_iters=100"]
CHARS = 1_115_394  # the size of nanoGPT's tinyshakespeare input.txt


def banyan_config(data: Path, iters: int, dtype: str) -> str:
    """nanoGPT's shakespeare_char settings in banyan terms (lr 1e-3 -> 1e-4 cosine, beta2 0.99, clip 1, and
    no biases: nanoGPT's train.py defaults to bias=False).

    train.dtype stays banyan's default (auto: bf16 autocast where the CPU has bf16 matrix units, else fp32);
    nanoGPT on CPU runs fp32 (its dtype setting only applies to CUDA autocast). --banyan_dtype overrides."""
    return f"""[model]
arch = "gpt2"
bias = false
n_layer = 4
n_head = 4
n_kv_head = 4
d_model = 128
max_seq_len = 64
[data]
path = "{data}"
[train]
max_steps = {iters}
seq_len = 64
micro_batch = 12
dtype = "{dtype}"
eval_every = 250
eval_batches = 20
log_every = 1
sample_every = 0
grad_clip = 1.0
[optim]
name = "adamw"
lr = 1e-3
warmup_steps = 100
schedule = "cosine"
min_lr_ratio = 0.1
weight_decay = 0.1
beta2 = 0.99
[checkpoint]
every = 250
"""


def _split_paragraphs(text: str, n: int) -> list[str]:
    """`text` cut at paragraph breaks into `n` documents of about equal paragraph counts."""
    paras = text.split("\n\n")
    bounds = [round(i * len(paras) / n) for i in range(n + 1)]
    return ["\n\n".join(paras[a:b]) for a, b in zip(bounds, bounds[1:])]


def same_held_out_documents(text: str, fraction: float = 0.1) -> list[str]:
    """`text` as banyan documents (~20 paragraphs each), placed so that banyan holds out exactly the text
    nanoGPT's prepare.py holds out: its last 10% of characters. banyan draws whole documents for val by a
    hash of their position (banyan.data.prepare.val_mask): the tail is cut into as many documents as
    positions drawn and put there in order; the head fills the other positions in order. Both sides then
    report the val loss of the same characters (banyan's documents end where nanoGPT's text has a
    paragraph break, so a few boundary predictions differ)."""
    from banyan.data.prepare import PrepareConfig, val_mask

    n_docs = max(2, len(text.split("\n\n")) // 20)
    held = val_mask(PrepareConfig.seed, 0, n_docs, fraction)
    k = int(held.sum())
    cut = int(len(text) * 0.9)  # nanoGPT's data/shakespeare_char/prepare.py: data[:int(n*0.9)] is train
    if not 0 < k < n_docs:
        raise SystemExit(f"the val split drew {k} of {n_docs} documents; cannot place nanoGPT's held-out text")
    train, val = iter(_split_paragraphs(text[:cut], n_docs - k)), iter(_split_paragraphs(text[cut:], k))
    return [next(val) if h else next(train) for h in held]


def prepare(nanogpt: Path, out: Path, iters: int, dtype: str) -> Path:
    """Copy nanoGPT, write the shared text, run both data preparations; returns banyan's config file."""
    from banyan.data.sources import shakespeare_documents

    text = "\n\n".join(shakespeare_documents())[:CHARS]
    nano = out / "nanogpt"
    if not nano.exists():
        shutil.copytree(nanogpt, nano, ignore=shutil.ignore_patterns(".git"))
    (nano / "data/shakespeare_char/input.txt").write_text(text)
    subprocess.run([sys.executable, "data/shakespeare_char/prepare.py"], cwd=nano, check=True, capture_output=True)
    docs = out / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in same_held_out_documents(text)))
    subprocess.run([sys.executable, "-m", "banyan", "data", "prepare", "--source", str(docs), "--tokenizer", "char",
                    "--out", str(out / "data"), "--val_fraction", "0.1", "--overwrite", "--no_progress"], check=True,
                   capture_output=True)
    cfg = out / "banyan.toml"
    cfg.write_text(banyan_config(out / "data", iters, dtype))
    return cfg


def run(cmd: list[str], cwd: Path, pattern: str) -> tuple[float, float, float | None, str]:
    """(wall seconds, CPU seconds, val loss parsed from the first line matching `pattern`, dtype) of one whole
    process (and its children); the dtype is the one banyan's start-up line names (what train.dtype
    resolved to), fp32 for nanoGPT. CPU time (user + system) is the figure to compare on a loaded machine."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({p.returncode}):\n{p.stderr[-2000:]}")
    m = re.search(pattern, p.stdout + p.stderr)
    dtype = re.search(r"device \S+, dtype (\w+)", p.stdout + p.stderr)
    return wall, cpu, float(m.group(1)) if m else None, dtype.group(1) if dtype else "fp32"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("nanogpt", type=Path, help="a nanoGPT checkout (model.py, train.py, config/)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--out", type=Path, default=Path("/tmp/vs-nanogpt"))
    ap.add_argument("--sides", default="nanogpt,banyan,banyan-2p",
                    help="comma-separated sides to run (nanogpt is the reference and always runs)")
    ap.add_argument("--banyan_dtype", default="auto", choices=["auto", "fp32", "bf16"],
                    help="banyan's train.dtype (default: its own default, auto)")
    a = ap.parse_args()
    if not (a.nanogpt / "train.py").is_file() or not (a.nanogpt / "config/train_shakespeare_char.py").is_file():
        raise SystemExit(f"{a.nanogpt}: not a nanoGPT checkout (needs train.py and config/train_shakespeare_char.py)")
    a.out.mkdir(parents=True, exist_ok=True)
    cfg = prepare(a.nanogpt, a.out, a.iters, a.banyan_dtype)
    nano_cmd = [sys.executable, "train.py", *NANO_ARGS, f"--max_iters={a.iters}", f"--lr_decay_iters={a.iters}",
                f"--out_dir={a.out / 'nano_out'}"]
    ours = [sys.executable, "-m", "banyan", "pretrain", "--config", str(cfg), "--log.no_progress", "--log.no_plots",
            "--log.no_tensorboard"]
    ours_pat = r"step 500: val loss ([\d.]+)"
    # name: (command, working folder, val-loss pattern, run folder emptied before each round or None)
    sides = {"nanogpt": (nano_cmd, a.out / "nanogpt", r"step 500: train loss [\d.]+, val loss ([\d.]+)", None),
             "banyan": (ours + ["--out", str(a.out / "run1")], a.out, ours_pat, a.out / "run1"),
             "banyan-2p": (ours + ["--out", str(a.out / "run2"), "--nproc", "2", "--train.micro_batch", "6"], a.out,
                           ours_pat, a.out / "run2")}
    keep = {"nanogpt", *a.sides.split(",")}
    if keep - set(sides):
        raise SystemExit(f"--sides: unknown {sorted(keep - set(sides))}; choose from {', '.join(sides)}")
    sides = {name: side for name, side in sides.items() if name in keep}
    rows = []
    for r in range(a.rounds):
        row = {}
        for name, (cmd, cwd, pat, run_dir) in sides.items():
            if run_dir is not None:
                shutil.rmtree(run_dir, ignore_errors=True)
            row[name] = run(cmd, cwd, pat)
            wall, cpu, loss, dtype = row[name]
            print(f"round {r}: {name:<9} {wall:7.1f} s wall {cpu:7.1f} s CPU  val loss@500 {loss}  dtype {dtype}",
                  flush=True)
        rows.append(row)
    result = {"iters": a.iters, "rounds": [{k: {"wall_s": round(w, 2), "cpu_s": round(c, 2), "val_loss_500": v,
                                                "dtype": d} for k, (w, c, v, d) in row.items()} for row in rows]}
    print(f"\n{'side':<10} {'wall s':>8} {'nanoGPT/side':>12} {'spread':>11} {'CPU s':>8} {'nanoGPT/side':>12} "
          f"{'spread':>11} {'val loss@500':>13} dtype")
    for name in sides:
        line, result[name] = f"{name:<10}", {"dtype": rows[-1][name][3]}
        for i, what in ((0, "wall"), (1, "cpu")):  # medians over rounds; ratio > 1: banyan is faster
            ratios = [row["nanogpt"][i] / row[name][i] for row in rows]
            secs = statistics.median(row[name][i] for row in rows)
            result[name].update({f"{what}_s_median": round(secs, 2), f"{what}_ratio_median": round(
                statistics.median(ratios), 3), f"{what}_ratio_min": round(min(ratios), 3),
                f"{what}_ratio_max": round(max(ratios), 3)})
            line += f" {secs:>8.1f} {statistics.median(ratios):>12.2f} {min(ratios):>5.2f}-{max(ratios):<5.2f}"
        print(f"{line} {rows[-1][name][2]!s:>13} {rows[-1][name][3]}")
    (a.out / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
