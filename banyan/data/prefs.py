"""Preference data: (prompt, chosen, rejected) records, rendered with the chat template.

Two record forms (detected per record):

* explicit        ``prompt``, ``chosen``, ``rejected``: each a string or a list of
                  ``{"role", "content"}`` messages. A string prompt is one user turn, a string
                  response one assistant turn; the pair is prompt + chosen against prompt + rejected.
* implicit prompt ``chosen`` and ``rejected`` are whole conversations (message lists whose first
                  message is not the assistant's) sharing a prefix, as in UltraFeedback-binarized
                  (``prompt``, ``chosen``, ``rejected``, ``score_chosen``, ``score_rejected``); the
                  prompt is their longest common prefix of messages.

Scores (``score_chosen`` / ``score_rejected``) are kept when present. Sources are those of
banyan.data.chat (.jsonl, .json, .parquet, a folder, ``hf:NAME``) and the embedded
``shakespeare-pairs`` (banyan.data.dialogue: the real next speech against one from another scene); turns are parsed by its
message reader. A bad record (missing field, empty content, a response that is not an assistant
turn, chosen identical to rejected) is a `DataError` naming the file:line and field.

Encoding: each side is rendered with `encode_conversation`; only the tokens of the final
assistant turn (its content and closing END_OF_TURN) are the response, so earlier assistant turns
of the prompt are context, not trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from banyan.data import DataError
from banyan.data.chat import ROLES, Conversation, RecordError, Turn, _text, _turns, raw_records
from banyan.data.tokenizer import Tokenizer

_ROLES = {r: r for r in ROLES}


@dataclass
class PrefPair:
    """One preference pair: the shared prompt turns and the two responses (each ending in an assistant turn)."""

    prompt: Conversation
    chosen: Conversation
    rejected: Conversation
    where: str
    score_chosen: float | None = None
    score_rejected: float | None = None


def _side(value: object, where: str, name: str, role: str) -> Conversation:
    """A string (one `role` turn) or a message list -> turns."""
    if isinstance(value, list):
        if not value:
            raise RecordError(f"{where}: field '{name}' is an empty list", "empty_content")
        return _turns(value, where, name, "role", "content", _ROLES)
    return [Turn(role, _text(value, where, name))]


def _score(record: dict, key: str, where: str) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{where}: field '{key}' must be a number, got {type(value).__name__}", "schema")
    return float(value)


def _split_shared(chosen: Conversation, rejected: Conversation) -> tuple[Conversation, Conversation, Conversation]:
    """Longest common message prefix of two conversations -> (prompt, chosen rest, rejected rest)."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def to_pair(record: object, where: str) -> PrefPair:
    """One record (either form) -> a validated PrefPair (RecordError naming `where` and the field)."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(record).__name__}", "schema")
    for key in ("chosen", "rejected"):
        if key not in record:
            raise RecordError(f"{where}: no field '{key}' (found: {sorted(record)[:8]})", "schema")
    chosen_raw = record["chosen"]
    implicit = isinstance(chosen_raw, list) and chosen_raw and isinstance(chosen_raw[0], dict) \
        and chosen_raw[0].get("role") != "assistant"
    chosen = _side(chosen_raw, where, "chosen", "assistant")
    rejected = _side(record["rejected"], where, "rejected", "assistant")
    if implicit:
        prompt, chosen, rejected = _split_shared(chosen, rejected)
        if not prompt:
            raise RecordError(f"{where}: 'chosen' and 'rejected' are conversations sharing no prefix "
                              "(the implicit-prompt form needs the same prompt turns in both)", "schema")
    else:
        if "prompt" not in record:
            raise RecordError(f"{where}: no field 'prompt' (found: {sorted(record)[:8]})", "schema")
        prompt = _side(record["prompt"], where, "prompt", "user")
    if chosen == rejected:
        raise RecordError(f"{where}: 'chosen' is identical to 'rejected'", "identical")
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        if not side or side[-1].role != "assistant":
            raise RecordError(f"{where}: field '{name}' must end with an assistant turn (roles: "
                              f"{', '.join(t.role for t in side) or 'none'})", "no_assistant")
    return PrefPair(prompt, chosen, rejected, where, _score(record, "score_chosen", where),
                    _score(record, "score_rejected", where))


def _records(source: str, split: str, hf_config: str, hf_data_files: str):
    """(where, record) of a file/folder/hf: source, or of the embedded shakespeare-pairs (split train|val)."""
    from banyan.data.dialogue import PAIRS_SOURCE, dialogue_pairs

    if source == PAIRS_SOURCE:
        return ((f"{PAIRS_SOURCE}[{split}] #{i}", r) for i, r in enumerate(dialogue_pairs(split)))
    return raw_records(source, hf_config=hf_config, hf_split=split, hf_data_files=hf_data_files)


def load_pairs(source: str, *, split: str = "train", hf_config: str = "", hf_data_files: str = "",
               max_pairs: int = 0) -> list[PrefPair]:
    """Every preference pair of `source` (a DataError at the first bad record, naming it)."""
    if not source.strip():
        raise DataError("preference data is empty; pass a .jsonl/.json/.parquet file or folder, or hf:NAME")
    pairs = []
    for where, record in _records(source, split, hf_config, hf_data_files):
        try:
            pairs.append(to_pair(record, where))
        except RecordError as e:
            raise DataError(str(e)) from None
        if max_pairs and len(pairs) >= max_pairs:
            break
    if not pairs:
        raise DataError(f"preference data {source!r} holds no records")
    return pairs


def last_turn_mask(trained: list[bool]) -> list[bool]:
    """Keep only the last run of True in `trained` (the final assistant turn and its END_OF_TURN)."""
    out = [False] * len(trained)
    i = len(trained) - 1
    while i >= 0 and not trained[i]:
        i -= 1
    while i >= 0 and trained[i]:
        out[i] = True
        i -= 1
    return out


def encode_pair(tok: Tokenizer, template: str, pair: PrefPair) -> tuple[tuple[list[int], list[bool]], ...]:
    """((chosen ids, response mask), (rejected ids, response mask)): prompt + response rendered whole."""
    from banyan.data.chat_template import encode_conversation

    out = []
    for side in (pair.chosen, pair.rejected):
        ids, trained = encode_conversation(tok, template, pair.prompt + side)
        out.append((ids, last_turn_mask(trained)))
    return tuple(out)
