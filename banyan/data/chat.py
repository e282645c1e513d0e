"""Conversation data: one reader for the chat / instruction formats people have.

Formats (detected from the first record, or forced with `format=`):

* ``alpaca``             Dolphin / Alpaca: ``instruction``, optional ``input``, ``output`` (optional
                         ``system``). The user turn is ``instruction``, plus a blank line and ``input``
                         when that is non-empty (the Alpaca convention); ``output`` is the assistant turn.
* ``sharegpt``           ``{"conversations": [{"from": "system|human|gpt", "value": ...}]}`` (``user`` /
                         ``assistant`` accepted as aliases), extra keys such as ShareGPT V3's ``id`` ignored.
* ``messages``           ``{"messages": [{"role": "system|user|assistant", "content": ...}]}``, multi-turn.
* ``prompt_completion``  ``prompt`` + ``completion``, each a string (one user and one assistant turn)
                         or a list of messages (TRL's conversational prompt-completion form).

Sources: ``.jsonl`` / ``.jsonl.gz`` (one record a line), ``.json`` (one JSON list of records, like the
ShareGPT V3 "unfiltered cleaned split" file; a .json file that is really jsonl is read as jsonl),
``.parquet``, a folder of those, ``hf:NAME`` (datasets streaming; packaged builders such as
``hf:json`` read `hf_data_files`), and the embedded ``shakespeare-dialogue`` (see banyan.data.dialogue).

Every record becomes a `Conversation`: a list of `Turn(role, content)` with role in system / user /
assistant. A bad record (malformed JSON, unknown role or ``from`` value, empty content, no assistant
turn, wrong schema) raises `DataError` naming the file, line or record index and field, or with
`skip_invalid=True` is skipped and counted by kind in `ChatStats.reasons`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from banyan.data import DataError
from banyan.data.sources import JSONL_SUFFIXES, PARQUET_SUFFIXES, SourceStats, file_suffix, hf_examples, \
    hf_where, jsonl_records, list_files, parquet_rows

ROLES = ("system", "user", "assistant")
FORMATS = ("auto", "alpaca", "sharegpt", "messages", "prompt_completion")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
JSON_SUFFIXES = (".json",)
CHAT_SUFFIXES = JSONL_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES
DIALOGUE_SOURCE = "shakespeare-dialogue"


class Turn(NamedTuple):
    """One message: `role` in ROLES, `content` the text."""

    role: str
    content: str


Conversation = list[Turn]


def to_messages(conv: Conversation) -> list[dict[str, str]]:
    """The HF chat form of a conversation: [{"role": ..., "content": ...}, ...]."""
    return [{"role": t.role, "content": t.content} for t in conv]


@dataclass
class ChatStats(SourceStats):
    """`SourceStats` plus the skipped records counted by kind (malformed_json, schema, unknown_role,
    empty_content, no_assistant)."""

    reasons: Counter = field(default_factory=Counter)

    def skip(self, reason: str, kind: str = "malformed_json") -> None:
        super().skip(reason)
        self.reasons[kind] += 1


class RecordError(DataError):
    """A record that is not a valid conversation; `kind` says why (the key of `ChatStats.reasons`)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------- record -> Conversation
def detect_format(record: object, where: str) -> str:
    """The format of one record, from its keys (a RecordError if none fits)."""
    if isinstance(record, dict):
        if isinstance(record.get("conversations"), list):
            return "sharegpt"
        if isinstance(record.get("messages"), list):
            return "messages"
        if "instruction" in record and "output" in record:
            return "alpaca"
        if "prompt" in record and "completion" in record:
            return "prompt_completion"
        found = sorted(record)[:8]
    else:
        found = type(record).__name__
    raise RecordError(f"{where}: cannot tell the chat format (keys {found}); expected 'conversations' (sharegpt), "
                      "'messages', 'instruction'+'output' (alpaca) or 'prompt'+'completion'; or set format", "schema")


def _text(value: object, where: str, name: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{where}: field '{name}' must be a string, got {type(value).__name__}", "schema")
    if not value.strip():
        raise RecordError(f"{where}: field '{name}' is empty", "empty_content")
    return value


def _field(record: dict, key: str, where: str) -> object:
    if key not in record:
        raise RecordError(f"{where}: no field '{key}' (found: {sorted(record)[:8]})", "schema")
    return record[key]


def _turns(items: object, where: str, name: str, role_key: str, text_key: str,
           roles: dict[str, str]) -> Conversation:
    """A list of {role_key, text_key} dicts -> turns, mapping role values through `roles`."""
    if not isinstance(items, list):
        raise RecordError(f"{where}: field '{name}' must be a list, got {type(items).__name__}", "schema")
    conv = []
    for i, item in enumerate(items):
        at = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise RecordError(f"{where}: {at} must be an object, got {type(item).__name__}", "schema")
        value = _field(item, role_key, f"{where}: {at}")
        if value not in roles:
            raise RecordError(f"{where}: {at}.{role_key}: unknown value {value!r} "
                              f"(expected {', '.join(roles)})", "unknown_role")
        conv.append(Turn(roles[value], _text(_field(item, text_key, f"{where}: {at}"), where, f"{at}.{text_key}")))
    return conv


def _alpaca(record: dict, where: str) -> Conversation:
    user = _text(_field(record, "instruction", where), where, "instruction")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise RecordError(f"{where}: field 'input' must be a string, got {type(extra).__name__}", "schema")
    if extra and extra.strip():
        user = f"{user}\n\n{extra}"
    conv = [Turn("user", user), Turn("assistant", _text(_field(record, "output", where), where, "output"))]
    if record.get("system"):
        conv.insert(0, Turn("system", _text(record["system"], where, "system")))
    return conv


def _prompt_completion(record: dict, where: str) -> Conversation:
    roles = {r: r for r in ROLES}
    out: Conversation = []
    for key, role in (("prompt", "user"), ("completion", "assistant")):
        value = _field(record, key, where)
        if isinstance(value, list):
            out += _turns(value, where, key, "role", "content", roles)
        else:
            out.append(Turn(role, _text(value, where, key)))
    return out


def to_conversation(record: object, fmt: str, where: str) -> Conversation:
    """One record in format `fmt` -> a validated Conversation (raises RecordError naming `where`)."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(record).__name__}", "schema")
    if fmt == "alpaca":
        conv = _alpaca(record, where)
    elif fmt == "sharegpt":
        conv = _turns(_field(record, "conversations", where), where, "conversations", "from", "value",
                      SHAREGPT_ROLES)
    elif fmt == "messages":
        conv = _turns(_field(record, "messages", where), where, "messages", "role", "content",
                      {r: r for r in ROLES})
    elif fmt == "prompt_completion":
        conv = _prompt_completion(record, where)
    else:
        raise DataError(f"unknown chat format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not any(t.role == "assistant" for t in conv):
        raise RecordError(f"{where}: conversation has no assistant turn (roles: "
                          f"{', '.join(t.role for t in conv) or 'none'})", "no_assistant")
    return conv


# ----------------------------------------------------------------------------- raw records per source
def json_list_records(path: Path, skip_invalid: bool, stats: ChatStats) -> Iterator[tuple[str, object]]:
    """(where, record) for one .json file: a JSON list of records, or jsonl under a .json name."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte offset {e.start})") from None
    if not text.lstrip().startswith("["):
        for lineno, record in jsonl_records(path, skip_invalid, stats):
            yield f"{path}:{lineno}", record
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:  # one document: nothing to skip past
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    for i, record in enumerate(records):
        yield f"{path}: record {i}", record


def raw_records(source: str, *, hf_config: str = "", hf_split: str = "train", hf_data_files: str = "",
                skip_invalid: bool = False, stats: ChatStats | None = None) -> Iterator[tuple[str, object]]:
    """(where, record) pairs of a file, folder or hf: source; `where` names file+line / record / row."""
    stats = stats if stats is not None else ChatStats()
    if source.startswith("hf:"):
        name = source[3:].strip()
        if not name:
            raise DataError("hf: source needs a dataset name, e.g. hf:cognitivecomputations/dolphin or hf:json")
        where = hf_where(name, hf_config, hf_split)
        for i, example in enumerate(hf_examples(name, config=hf_config, split=hf_split, data_files=hf_data_files)):
            yield f"{where}: example {i}", example
        return
    for path in list_files(Path(source).expanduser(), CHAT_SUFFIXES):
        suffix = file_suffix(path, CHAT_SUFFIXES)
        if suffix in JSONL_SUFFIXES:
            for lineno, record in jsonl_records(path, skip_invalid, stats):
                yield f"{path}:{lineno}", record
        elif suffix in JSON_SUFFIXES:
            yield from json_list_records(path, skip_invalid, stats)
        else:
            for row, record in enumerate(parquet_rows(path), 1):
                yield f"{path}: row {row}", record


# ----------------------------------------------------------------------------- the reader
def iter_conversations(source: str, *, format: str = "auto", split: str = "train", hf_config: str = "",
                       hf_data_files: str = "", skip_invalid: bool = False, max_conversations: int = 0,
                       stats: ChatStats | None = None) -> Iterator[Conversation]:
    """Valid conversations of `source` in order; `stats` (if given) counts kept and skipped records.

    `split` is the HF split for hf: sources and train / val for shakespeare-dialogue (ignored for
    files). With `format="auto"` the first record fixes the format for the whole source.
    """
    if format not in FORMATS:
        raise DataError(f"unknown chat format {format!r}; expected one of {', '.join(FORMATS)}")
    stats = stats if stats is not None else ChatStats()
    if not source.strip():
        raise DataError(f"chat source is empty; pass a .jsonl/.json/.parquet file or folder, hf:NAME or "
                        f"{DIALOGUE_SOURCE}")
    if source == DIALOGUE_SOURCE:
        from banyan.data.dialogue import dialogue_conversations

        records = ((f"{DIALOGUE_SOURCE}[{split}] #{i}", conv)
                   for i, conv in enumerate(dialogue_conversations(split)))
    else:
        records = raw_records(source, hf_config=hf_config, hf_split=split, hf_data_files=hf_data_files,
                              skip_invalid=skip_invalid, stats=stats)
    fmt = None if format == "auto" else format
    for where, record in records:
        if source == DIALOGUE_SOURCE:
            conv = record
        else:
            try:  # with skip_invalid, an undetectable first record is skipped and the next one decides
                fmt = fmt or detect_format(record, where)
                conv = to_conversation(record, fmt, where)
            except RecordError as e:
                if not skip_invalid:
                    raise DataError(f"{e} (skip_invalid skips such records)") from None
                stats.skip(str(e), e.kind)
                continue
        stats.docs += 1
        stats.bytes += sum(len(t.content.encode("utf-8")) for t in conv)
        yield conv
        if max_conversations and stats.docs >= max_conversations:
            stats.truncated = True
            return


def load_conversations(source: str, **kwargs) -> tuple[list[Conversation], ChatStats]:
    """All conversations of `source` (see `iter_conversations` for the arguments) and the counts."""
    stats = ChatStats()
    convs = list(iter_conversations(source, stats=stats, **kwargs))
    if not convs:
        why = f" ({stats.skipped_invalid} invalid skipped: {dict(stats.reasons)})" if stats.skipped_invalid else ""
        raise DataError(f"chat source {source!r} has no valid conversations{why}")
    return convs, stats
