"""`banyan chat --ckpt RUN|CKPT [--system TEXT] [--prompt TEXT]`: talk to a checkpoint, one KV cache per chat.

Every turn is rendered with the ONE chat template stored beside the checkpoint's tokenizer
(banyan.data.chat_template), exactly as training rendered it. The conversation lives in a KV cache:
each turn the whole conversation is rendered to ids, compared with the ids the cache already holds,
and only the suffix after their common prefix is run through the model (`CausalLM.prefill`). With a
prefix-stable template (the default one) that suffix is just ``<|end|><|user|>...<|assistant|>``; a
template that rewrites earlier text re-reads from the first changed position, which is correct and
reported once. Replies are sampled one token at a time (`CausalLM.stream`) and printed as they come,
decoded incrementally so a character split over several byte tokens prints whole.

When the conversation no longer leaves room for a reply, the oldest whole exchanges (a user turn and
its reply) are dropped, the system prompt kept, and the cache is re-read once from the system prompt.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from banyan.data.chat import Conversation, Turn
from banyan.data.chat_template import (CONFIG_FILE, DEFAULT_CHAT_TEMPLATE, END_OF_TURN, TEMPLATE_FILE,
                                       check_template, encode_prompt, load_chat_template)
from banyan.data.tokenizer import Tokenizer
from banyan.errors import BanyanError, ConfigError
from banyan.train.sample import GenerationFlags, load_for_inference

COMMANDS_HELP = "/reset starts over, /system TEXT sets the system prompt, /quit (or Ctrl-D) exits; " \
                "Ctrl-C stops a reply"
USER_PROMPT, REPLY_PROMPT = "user> ", "assistant> "


@dataclass
class ChatConfig(GenerationFlags):
    """Chat with a checkpoint through its chat template."""

    ckpt: str = ""
    """A checkpoint folder (step_N), or a run folder (its latest checkpoint); single-process or sharded."""
    system: str = ""
    """System prompt (empty: none)."""
    prompt: str = ""
    """Answer this one user message, print only the reply and exit (for scripts); empty: interactive."""


class TextStream:
    """Incremental decoding: `push(id)` returns the text that became final with this token.

    Decoding token by token would print a multi-byte character as several U+FFFD; instead the reply is
    decoded whole and only the new characters are returned, holding back while it ends in U+FFFD (an
    unfinished byte sequence). `flush()` returns whatever is still held back."""

    def __init__(self, tok: Tokenizer):
        self.tok, self.ids, self.shown = tok, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.shown = text[self.shown:], len(text)
        return new

    def flush(self) -> str:
        text = self.tok.decode(self.ids)
        new, self.shown = text[self.shown:], len(text)
        return new


class ChatSession:
    """One conversation with a model: its turns, and the KV cache holding the ids in `cached`."""

    def __init__(self, model, tok: Tokenizer, template: str, system: str = "", sampling: GenerationFlags | None = None,
                 generator: torch.Generator | None = None, notify: Callable[[str], None] | None = None):
        self.model, self.tok, self.template = model, tok, template
        self.sampling = sampling or GenerationFlags()
        self.generator = generator
        self.notify = notify or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.stop_ids = {tok.special_id(END_OF_TURN), tok.eos_id}
        self.max_len = model.config.max_seq_len
        self.device = model.output_weight().device
        self.cache = model.make_cache(1, self.max_len)
        self.cached: list[int] = []  # the ids whose K/V the cache holds, positions 0..len-1
        self.turns: Conversation = [Turn("system", system)] if system else []
        self._extends = False  # True while the next render should extend `cached` (no reset/edit since)
        self._told_unstable = False

    # ------------------------------------------------------------------ conversation edits
    def reset(self) -> None:
        """Forget the exchanges, keep the system prompt (its cached ids are reused)."""
        self.turns = [t for t in self.turns if t.role == "system"]
        self._extends = False

    def set_system(self, text: str) -> None:
        """Set (empty: remove) the system prompt; the exchanges are kept and re-read from it next turn."""
        self.turns = ([Turn("system", text)] if text else []) + [t for t in self.turns if t.role != "system"]
        self._extends = False

    # ------------------------------------------------------------------ one reply
    def reply(self, user: str, on_text: Callable[[str], None] = lambda s: None) -> tuple[str, str]:
        """Answer `user`, passing text to `on_text` as it is generated; returns (reply, why it stopped):
        "end" (an end token), "length" (max_new_tokens), "context" (model.max_seq_len) or "interrupted"
        (Ctrl-C: the partial reply is kept as the assistant turn)."""
        if not user.strip():
            raise BanyanError("empty message")
        ids = self._fit(self.turns + [Turn("user", user)])
        budget = min(self.sampling.max_new_tokens, self.max_len - len(ids))
        stream, reply, why, pending = TextStream(self.tok), [], "length", None
        try:
            logits = self._sync(ids)
            s = self.sampling
            for t in self.model.stream(logits, self.cache, len(ids), budget, s.temperature, s.top_k or None,
                                       s.top_p if s.top_p < 1 else None, self.generator):
                if pending is not None:  # stream feeds a token before it yields the next one
                    self.cached.append(pending)
                token = int(t)
                if token in self.stop_ids:
                    why = "end"
                    break
                pending = token
                reply.append(token)
                on_text(stream.push(token))
            else:
                why = "context" if budget < self.sampling.max_new_tokens else "length"
        except KeyboardInterrupt:
            why = "interrupted"
        on_text(stream.flush())
        text = self.tok.decode(reply)
        if reply or why != "interrupted":  # a reply stopped before its first token leaves no turn
            self.turns += [Turn("user", user), Turn("assistant", text)]
            self._extends = True
        return text, why

    def _render(self, turns: Conversation) -> list[int]:
        return encode_prompt(self.tok, self.template, turns, add_generation_prompt=True)

    def _fit(self, turns: Conversation) -> list[int]:
        """Ids of `turns` + the assistant header, dropping the oldest exchanges until a reply has room:
        min(max_new_tokens, max_seq_len // 2) free positions (a long history must not squeeze replies
        to nothing, nor may a small model's whole context be reserved)."""
        reserve = max(1, min(self.sampling.max_new_tokens, self.max_len // 2))
        ids, dropped = self._render(turns), 0
        while len(ids) + reserve > self.max_len:
            first = next(i for i, t in enumerate(turns) if t.role != "system")  # the oldest user turn
            nxt = next((i for i in range(first + 1, len(turns)) if turns[i].role == "user"), None)
            if nxt is None:  # only the new message is left
                if len(ids) < self.max_len:
                    break
                raise BanyanError(f"the message takes {len(ids)} positions with the system prompt; the model's "
                                  f"context is {self.max_len} (model.max_seq_len)")
            turns, dropped = turns[:first] + turns[nxt:], dropped + 1
            ids = self._render(turns)
        if dropped:
            self.turns, self._extends = turns[:-1], False
            self.notify(f"[context full ({self.max_len} positions): dropped the oldest {dropped} exchange(s), "
                        f"re-reading the conversation once]")
        return ids

    def _sync(self, ids: list[int]) -> torch.Tensor:
        """Make the cache hold `ids`, running only the suffix after what it already holds; returns the
        last position's logits [1, V]. At least one id is run, since its logits are needed."""
        common = 0
        for a, b in zip(self.cached, ids):
            if a != b:
                break
            common += 1
        if self._extends and common < len(self.cached) and not self._told_unstable:
            self._told_unstable = True
            self.notify(f"[the rendered conversation differs from the cached ids at position {common} (a template "
                        f"that is not prefix-stable, or a reply that re-encodes differently); re-reading from there]")
        common = min(common, len(ids) - 1)
        self.cached = self.cached[:common]  # an interrupted prefill leaves positions >= common undefined
        x = torch.tensor([ids[common:]], dtype=torch.long, device=self.device)
        logits = self.model.prefill(x, self.cache, start_pos=common)
        self.cached = list(ids)
        return logits


# ----------------------------------------------------------------------------- loading and the REPL
def load_template(ckpt: Path, tok: Tokenizer, notify: Callable[[str], None]) -> str:
    """The checkpoint's chat template; DEFAULT_CHAT_TEMPLATE (said once) when it stores none. A stored
    template that is broken is an error, not a silent fallback."""
    if (ckpt / TEMPLATE_FILE).is_file() or (ckpt / CONFIG_FILE).is_file():
        template = load_chat_template(ckpt)
    else:
        notify(f"[{ckpt} has no {CONFIG_FILE} with a chat template; using banyan's default template]")
        template = DEFAULT_CHAT_TEMPLATE
    check_template(tok, template)
    return template


def open_session(cfg: ChatConfig, notify: Callable[[str], None]) -> ChatSession:
    from banyan.parallel.env import resolve_device
    from banyan.train.checkpoint import resolve_checkpoint

    if not cfg.ckpt:
        raise ConfigError("give --ckpt RUN_OR_CHECKPOINT_FOLDER")
    cfg.check()
    device = resolve_device(cfg.device, flag="--device")
    ckpt = resolve_checkpoint(cfg.ckpt)
    model, tok, _ = load_for_inference(ckpt, device)
    template = load_template(ckpt, tok, notify)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    return ChatSession(model, tok, template, cfg.system, cfg, generator, notify)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def command(session: ChatSession, line: str) -> bool | None:
    """Run a /command: True to quit, False when handled, None when `line` is a message."""
    name, _, arg = line.strip().partition(" ")
    if not line.startswith("/"):
        return None
    if name in ("/quit", "/exit"):
        return True
    if name == "/reset":
        session.reset()
        session.notify("[new conversation]")
    elif name == "/system":
        session.set_system(arg.strip())
        session.notify(f"[system prompt {'set' if arg.strip() else 'removed'}; history kept, /reset starts over]")
    else:
        session.notify(f"[unknown command {name}; {COMMANDS_HELP}]")
    return False


def repl(session: ChatSession, read: Callable[[str], str] = input) -> int:
    """Read messages until /quit or EOF; stream each reply. Ctrl-C at the prompt clears the line."""
    session.notify(f"[banyan chat: {COMMANDS_HELP}]")
    while True:
        try:
            line = read(USER_PROMPT)
        except EOFError:
            _write("\n")
            return 0
        except KeyboardInterrupt:
            _write("^C\n")
            continue
        quit_ = command(session, line)
        if quit_:
            return 0
        if quit_ is False or not line.strip():
            continue
        _write(REPLY_PROMPT)
        try:
            _, why = session.reply(line, _write)
        except BanyanError as e:  # e.g. a message longer than the context: say so, keep chatting
            _write("\n")
            session.notify(f"[error: {e}]")
            continue
        _write("\n")
        if why in ("interrupted", "context"):
            session.notify("[stopped]" if why == "interrupted" else "[reply cut: the context is full]")


def main(argv: list[str] | None = None) -> int:
    from banyan.config import parse_cli

    cfg = parse_cli(ChatConfig, argv, prog="banyan chat")
    notify = (lambda msg: print(msg, file=sys.stderr, flush=True))
    session = open_session(cfg, notify)
    if cfg.prompt:
        _, why = session.reply(cfg.prompt, _write)
        _write("\n")
        return 130 if why == "interrupted" else 0
    if sys.stdin.isatty():
        import readline  # noqa: F401 - line editing and history for input()
    return repl(session)
