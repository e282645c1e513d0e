"""`banyan eval`: score a banyan run/checkpoint or a local HF folder on bpb, multiple-choice and exact-match tasks.

    banyan eval --model runs/s1 --tasks bpb:data/shakespeare,hellaswag:hs.jsonl,em-chat:arith.jsonl \
        [--limit 100] [--batch_size 8] [--json_out eval.json] [--log.wandb]

Prints a table (rich), writes JSON (`--json_out`, atomically) and, with --log.wandb, the metrics as
W&B summary fields of a run under --out. Task names and formats: banyan/eval/tasks.py; scoring:
banyan/eval/scoring.py (the same code the lm-eval adapter, banyan/eval/harness.py, calls).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from banyan.config import LogConfig, parse_cli
from banyan.data.tokenizer import Tokenizer
from banyan.errors import ConfigError
from banyan.eval import tasks as T
from banyan.eval.scoring import Scorer


@dataclass
class EvalConfig:
    """Evaluate a model on validation bpb, multiple-choice and exact-match tasks."""

    model: str = ""
    """A banyan run folder (latest checkpoint), a checkpoint folder (single or sharded), or a local HF model folder."""
    tasks: str = ""
    """Comma-separated NAME:PATH: bpb:DATA_DIR, hellaswag:F, arc:F, piqa:F, em:F, em-chat:F (jsonl files)."""
    limit: int = 0
    """Score only the first N items of each task (bpb: N validation batches); 0 = all."""
    batch_size: int = 8
    """Sequences per forward pass."""
    seq_len: int = 0
    """bpb tasks: tokens per validation window (0: the model's context, max_seq_len)."""
    max_new_tokens: int = 32
    """Generation budget of em tasks."""
    json_out: str = ""
    """Also write the results as JSON to this file."""
    device: str = "auto"
    """Device to run on."""
    record: bool = True
    """Keep the results with a banyan run (RUN/evals/CHECKPOINT.json), where export's model card finds them."""
    out: str = "runs/eval"
    """Folder for the W&B run files when --log.wandb."""
    log: LogConfig = field(default_factory=lambda: LogConfig(tensorboard=False, plots=False))
    """Logging: --log.wandb puts the metrics into a W&B run's summary; --log.progress shows a progress bar."""


@dataclass
class EvalModel:
    """What evaluation needs of a model: the module, its tokenizer and chat template (None without one)."""

    model: nn.Module
    tok: Tokenizer
    chat_template: str | None
    name: str
    run_dir: Path | None = None
    """The banyan run folder the checkpoint sits in (None for an HF folder or a loose checkpoint)."""
    ckpt: Path | None = None


def load_eval_model(path: str | Path, device: torch.device) -> EvalModel:
    """A local HF folder (config.json) through banyan.model.from_hf, else a banyan run/checkpoint."""
    from banyan.data.chat_template import load_chat_template
    from banyan.data.tokenizer import load_tokenizer
    from banyan.errors import DataError

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--model '{path}' does not exist (a run, checkpoint or HF model folder)")
    if (path / "config.json").is_file():
        from banyan.model.hf import from_hf

        model, tok_dir, run_dir, ckpt = from_hf(path), path, None, None
    else:
        from banyan.export.source import load_source

        source = load_source(path)
        model, tok_dir, run_dir, ckpt = source.model, source.tokenizer_file.parent, source.run_dir, source.ckpt
    try:
        template = load_chat_template(tok_dir)
    except DataError:
        template = None
    return EvalModel(model.to(device).eval(), load_tokenizer(tok_dir / "tokenizer.json"), template, path.name,
                     run_dir, ckpt)


# ----------------------------------------------------------------------------- metrics per task kind
def score_mc(scorer: Scorer, items: list[T.MCItem], progress=None) -> dict[str, float]:
    """acc, acc_norm (per character, lm-eval's), acc_bytes (per UTF-8 byte) over the items."""
    pairs, owner = [], []
    for k, item in enumerate(items):
        for choice in item.choices:
            pairs.append(scorer.encode_pair(item.context, T.TARGET_DELIMITER + choice))
            owner.append(k)
    lls = scorer.loglikelihood(pairs, progress)
    hits = {"acc": 0, "acc_norm": 0, "acc_bytes": 0}
    pos = 0
    for item in items:
        ll = [lls[pos + j][0] for j in range(len(item.choices))]
        pos += len(item.choices)
        for name, norm in (("acc", lambda c: 1.0), ("acc_norm", len), ("acc_bytes", lambda c: len(c.encode()))):
            # lm-eval normalises by the choice without the delimiter; max(.., 1) guards an empty choice
            scores = [v / max(norm(c), 1) for v, c in zip(ll, item.choices)]
            hits[name] += int(max(range(len(scores)), key=scores.__getitem__) == item.gold)
    return {k: v / len(items) for k, v in hits.items()} | {"items": len(items)}


def score_em(scorer: Scorer, items: list[tuple[str, str]], template: str | None, max_new_tokens: int,
             progress=None) -> dict[str, float]:
    """exact_match of the greedy answer (stripped) against the reference (stripped)."""
    if template is not None:
        from banyan.data.chat import Turn
        from banyan.data.chat_template import encode_prompt

        prompts = [encode_prompt(scorer.tok, template, [Turn("user", p)]) for p, _ in items]
    else:
        prompts = [scorer.tok.encode(p) or [scorer.prefix_id] for p, _ in items]
    outs = scorer.generate(prompts, max_new_tokens, stop=("\n",), progress=progress)
    hits = sum(o.strip() == a.strip() for o, (_, a) in zip(outs, items))
    return {"exact_match": hits / len(items), "items": len(items)}


def score_bpb(em: EvalModel, data_dir: str, cfg: EvalConfig, device: torch.device) -> dict[str, float]:
    """val loss and bits per byte over the val split of a prepared folder ("items" = scored tokens)."""
    from banyan.data.loader import TokenLoader
    from banyan.eval.lm import evaluate_lm
    from banyan.train.lm import causal_lm_loss

    ctx = em.model.config.max_seq_len
    if not 0 <= cfg.seq_len <= ctx:
        raise ConfigError(f"--seq_len {cfg.seq_len} is outside 0..{ctx} (the model's context)")
    loader = TokenLoader(data_dir, "val", seq_len=cfg.seq_len or ctx, micro_batch=cfg.batch_size, seed=0)
    if loader.vocab_size > em.model.config.vocab_size:
        raise ConfigError(f"{data_dir}: vocabulary of {loader.vocab_size} ids, the model has "
                          f"{em.model.config.vocab_size}; evaluate with data prepared with the model's tokenizer")
    batches = ({"input_ids": x, "labels": y} for x, y in loader.val_batches(cfg.limit))
    r = evaluate_lm(em.model, batches, causal_lm_loss, loader.token_bytes.to(device), prefix="")
    return {"loss": r["loss"], "bpb": r["bpb"], "items": r["tokens"]}


def run_task(spec: str, em: EvalModel, scorer: Scorer, cfg: EvalConfig, device: torch.device) -> dict[str, float]:
    from tqdm import tqdm

    name, path = T.parse_task(spec)
    if name == "bpb":
        return score_bpb(em, path, cfg, device)
    if name == "em-chat" and em.chat_template is None:
        raise ConfigError(f"task {spec}: the model {cfg.model} has no chat template (use em:FILE)")
    items = T.read_mc(name, path, cfg.limit) if name in T.MC_TASKS else T.read_em(path, cfg.limit)
    total = sum(len(i.choices) for i in items) if name in T.MC_TASKS else len(items)
    with tqdm(total=total, desc=name, disable=not cfg.log.progress, leave=False) as bar:
        if name in T.MC_TASKS:
            return score_mc(scorer, items, bar.update)
        template = em.chat_template if name == "em-chat" else None
        return score_em(scorer, items, template, cfg.max_new_tokens, bar.update)


# ----------------------------------------------------------------------------- output
def print_table(results: dict[str, dict[str, float]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("task", "metric", "value", "items", "items/s"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task, r in results.items():
        for metric, value in r.items():
            if metric not in ("items", "seconds", "items_per_s"):
                table.add_row(task, metric, f"{value:.4f}", str(r["items"]), f"{r['items_per_s']:.1f}")
    Console().print(table)


def log_wandb(cfg: EvalConfig, results: dict[str, dict[str, float]]) -> None:
    from banyan.logger import MetricsLogger

    def key(spec: str) -> str:  # "eval/arc_easy_acc": the task name and its file's stem, not the whole path
        name, _, path = spec.partition(":")
        return f"{name}_{Path(path).stem or Path(path).name}"

    flat = {f"eval/{key(task)}_{k}": v for task, r in results.items() for k, v in r.items()
            if isinstance(v, (int, float)) and math.isfinite(v)}
    with MetricsLogger(cfg.out, cfg.log, run_config={"model": cfg.model, "tasks": cfg.tasks, "limit": cfg.limit}) as lg:
        lg.log({"step": 0, "kind": "eval", **{k.removeprefix("eval/"): v for k, v in flat.items()}})
        if lg.wandb is not None:
            lg.wandb.summary.update(flat)


def evaluate(cfg: EvalConfig) -> dict[str, dict[str, float]]:
    """{task spec: metrics + items, seconds, items_per_s} for every task of cfg.tasks."""
    from banyan.parallel.env import resolve_device

    if not cfg.model:
        raise ConfigError("--model is required (a run, checkpoint or HF model folder)")
    specs = [s for s in cfg.tasks.split(",") if s.strip()]
    if not specs:
        raise ConfigError("--tasks is required, e.g. --tasks hellaswag:hs.jsonl,bpb:data/shakespeare")
    for s in specs:
        T.parse_task(s)  # every name checked before the model loads
    device = resolve_device(cfg.device, flag="--device")
    em = load_eval_model(cfg.model, device)
    scorer = Scorer(em.model, em.tok, device, cfg.batch_size)
    results = {}
    for spec in specs:
        t0 = time.perf_counter()
        r = run_task(spec.strip(), em, scorer, cfg, device)
        dt = time.perf_counter() - t0
        results[spec.strip()] = r | {"seconds": dt, "items_per_s": r["items"] / dt if dt > 0 else float("nan")}
    if cfg.record and em.run_dir is not None:
        from banyan.eval.record import record_results

        record_results(em.run_dir, em.ckpt, results, cfg.limit)
    return results


def main(argv: list[str]) -> int:
    from banyan.io import atomic_write_json

    cfg = parse_cli(EvalConfig, argv, prog="banyan eval")
    results = evaluate(cfg)
    print_table(results, f"banyan eval: {cfg.model}")
    if cfg.json_out:
        atomic_write_json(cfg.json_out, {"model": cfg.model, "limit": cfg.limit, "results": results})
    if cfg.log.wandb:
        log_wandb(cfg, results)
    return 0
