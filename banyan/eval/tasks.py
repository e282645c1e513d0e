"""The tasks of `banyan eval`: readers for the published jsonl formats and their metrics.

    bpb:DATA_DIR         validation loss and bits per byte on a prepared folder's val split
    hellaswag:FILE       ctx_a/ctx_b/activity_label (or ctx), endings, label; lm-eval's preprocessing
    arc:FILE             question, choices.text / choices.label, answerKey
    piqa:FILE            goal, sol1, sol2, label
    em:FILE, em-chat:FILE  prompt, answer: greedy generation, exact match (em-chat through the chat template)

Multiple choice follows lm-eval's task YAMLs (lm_eval/tasks/{hellaswag,arc,piqa}): the context is
doc_to_text, each choice is scored as " " + choice (target_delimiter), and
acc = argmax of log-likelihood, acc_norm = argmax of log-likelihood / len(choice) in characters
(lm-eval's acc_norm), acc_bytes = the same over UTF-8 bytes (lm-eval's acc_bytes; equal to acc_norm
on ASCII text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from banyan.errors import ConfigError, DataError

MC_TASKS = ("hellaswag", "arc", "piqa")
TASKS = ("bpb", *MC_TASKS, "em", "em-chat")
TARGET_DELIMITER = " "


@dataclass
class MCItem:
    """One multiple-choice question: the context, the choices (without the delimiter) and the gold index."""

    context: str
    choices: list[str]
    gold: int


def parse_task(spec: str) -> tuple[str, str]:
    """'name:path' -> (name, path); an unknown name or a missing path is a ConfigError."""
    name, sep, path = spec.strip().partition(":")
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}' in --tasks '{spec}'; tasks: " +
                          ", ".join(f"{t}:PATH" for t in TASKS))
    if not sep or not path:
        raise ConfigError(f"task '{spec}' needs a path: {name}:{'DATA_DIR' if name == 'bpb' else 'FILE.jsonl'}")
    return name, path


def jsonl(path: str | Path, limit: int = 0) -> Iterator[tuple[str, dict]]:
    """(where, record) for each non-blank line of a jsonl file; where = 'FILE:LINE'."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"task file {path} does not exist")
    n = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            yield where, rec
            n += 1
            if limit and n >= limit:
                return


def _get(rec: dict, key: str, where: str, kind: type | tuple[type, ...] = str):
    if key not in rec:
        raise DataError(f"{where}: missing field '{key}'")
    if not isinstance(rec[key], kind):
        raise DataError(f"{where}: field '{key}' must be {getattr(kind, '__name__', kind)}, "
                        f"got {type(rec[key]).__name__}")
    return rec[key]


def _label(value, n: int, where: str, key: str = "label") -> int:
    try:
        gold = int(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: '{key}' must be an integer index, got {value!r}") from None
    if not 0 <= gold < n:
        raise DataError(f"{where}: '{key}' {gold} is out of range for {n} choices (expected 0..{n - 1})")
    return gold


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag utils.preprocess: strip, drop WikiHow's [title]/[step] bracket artefacts."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_item(rec: dict, where: str) -> MCItem:
    """lm-eval's process_docs: query = activity_label + ': ' + ctx_a + ' ' + ctx_b.capitalize()."""
    endings = _get(rec, "endings", where, list)
    if "ctx_a" in rec:
        ctx = _get(rec, "ctx_a", where) + " " + _get(rec, "ctx_b", where).capitalize()
    else:
        ctx = _get(rec, "ctx", where)
    label = rec.get("activity_label")
    query = f"{label}: {ctx}" if isinstance(label, str) else ctx
    return MCItem(hellaswag_preprocess(query), [hellaswag_preprocess(str(e)) for e in endings],
                  _label(_get(rec, "label", where, (int, str)), len(endings), where))


def arc_item(rec: dict, where: str) -> MCItem:
    choices = _get(rec, "choices", where, dict)
    texts, labels = choices.get("text"), choices.get("label")
    if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
        raise DataError(f"{where}: 'choices' must hold lists 'text' and 'label' of equal length")
    key = _get(rec, "answerKey", where, (str, int))
    if str(key) not in [str(x) for x in labels]:
        raise DataError(f"{where}: answerKey {key!r} is not one of the choice labels {labels}")
    return MCItem(f"Question: {_get(rec, 'question', where)}\nAnswer:", [str(t) for t in texts],
                  [str(x) for x in labels].index(str(key)))


def piqa_item(rec: dict, where: str) -> MCItem:
    return MCItem(f"Question: {_get(rec, 'goal', where)}\nAnswer:", [_get(rec, "sol1", where), _get(rec, "sol2", where)],
                  _label(_get(rec, "label", where, (int, str)), 2, where))


READERS = {"hellaswag": hellaswag_item, "arc": arc_item, "piqa": piqa_item}


def read_mc(name: str, path: str | Path, limit: int = 0) -> list[MCItem]:
    items = [READERS[name](rec, where) for where, rec in jsonl(path, limit)]
    if not items:
        raise DataError(f"task file {path} has no items")
    return items


def read_em(path: str | Path, limit: int = 0) -> list[tuple[str, str]]:
    items = [(_get(rec, "prompt", where), str(_get(rec, "answer", where, (str, int, float))))
             for where, rec in jsonl(path, limit)]
    if not items:
        raise DataError(f"task file {path} has no items")
    return items
