"""Helpers for eval tests: a tiny banyan run (bpe tokenizer with a chat template) and task files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
from exportkit import make_tokenizer, save_single, tiny_model  # noqa: E402

CHOICES = ["Speak, speak.", "We are poor citizens", "All resolved", "famish 1234 apples"]


def make_run(root: Path, arch: str = "llama", tie: bool = False, n_kv_head: int = 2) -> Path:
    """A single-process checkpoint of a tiny random model in root/run; returns the run folder."""
    from banyan.data.tokenizer import load_tokenizer

    tok_file = make_tokenizer("bpe", root / "tok", chat=True)
    model = tiny_model(arch, load_tokenizer(tok_file).vocab_size, tie=tie, n_kv_head=n_kv_head)
    save_single(root / "run", model, tok_file)
    return root / "run"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def arc_records(n: int = 10) -> list[dict]:
    return [{"question": f"Citizen {i}, what say you?", "answerKey": "ABCD"[i % 4],
             "choices": {"text": CHOICES[i % 2:] + CHOICES[:i % 2], "label": ["A", "B", "C", "D"]}} for i in range(n)]


def piqa_records(n: int = 6) -> list[dict]:
    return [{"goal": f"To proceed {i} further", "sol1": "hear me speak.", "sol2": "famish, 56.7%!", "label": i % 2}
            for i in range(n)]


def hellaswag_records(n: int = 6) -> list[dict]:
    return [{"activity_label": "Citizens", "ctx_a": f"Before we proceed [title] any further {i}.",
             "ctx_b": "you are ALL", "ctx": "unused", "label": str(i % 4),
             "endings": [" resolved rather [step] to die", "to famish?  ", "speak, speak.", "apples"]}
            for i in range(n)]
