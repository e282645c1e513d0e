"""The chat template: one Jinja template (HF `chat_template` convention) defines the chat format.

Training (`encode_conversation`), generation (`encode_prompt`, `banyan chat`) and exported HF
tokenizers all render with the same template, stored beside ``tokenizer.json`` in
``tokenizer_config.json`` as transformers does (`write_tokenizer_config`, `load_chat_template`).
`banyan data prepare` writes it into every prepared folder; checkpoints copy it next to their
tokenizer.json, so `AutoTokenizer.from_pretrained(folder).apply_chat_template(...)` gives banyan's ids.

`DEFAULT_CHAT_TEMPLATE` renders ``<|bos|>`` then each message as ``<|ROLE|>content<|end|>``, and
``<|assistant|>`` when `add_generation_prompt`. Assistant content plus its ``<|end|>`` sit inside a
``{% generation %}`` block, so HF's `return_assistant_tokens_mask` (TRL's assistant-only loss) agrees
with banyan's trained mask.

Ids: the rendered string is cut at the control tokens the *template* wrote (every added token of the
tokenizer), which get their own ids; the text between them is encoded as raw text, so a control
token string inside message content stays text (banyan's tokenizer never turns raw text into a
special token). Where content holds no such string this is exactly what transformers does.
To know which characters came from content, the template is rendered once with each message's
content replaced by a unique sentinel, and once for real; the two must agree once the sentinels are
substituted back (the template must copy content verbatim), else a `DataError`.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

from banyan.data import DataError
from banyan.data.chat import Conversation, to_messages
from banyan.data.tokenizer import Tokenizer

END_OF_TURN = "<|end|>"
CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"  # where transformers >= 4.47 saves a single template
DEFAULT_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unknown role ' + message['role'] + '; expected system, user or assistant') -}}"
    "{%- endif -%}"
    "{{- '<|' + message['role'] + '|>' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|end|>' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] + '<|end|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)


# ----------------------------------------------------------------------------- Jinja
@lru_cache(maxsize=16)
def compile_template(template: str):
    """A compiled template in the environment transformers uses (sandboxed, trim/lstrip blocks,
    loop controls, `raise_exception`, `tojson`, and a `{% generation %}` tag that renders its body)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}`: renders the body; marks the trained span for HF."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise DataError(f"chat template line {e.lineno}: {e.message}") from None


# What transformers passes a template as variables (its special_tokens_map; banyan has no unk token).
SPECIAL_TOKENS_MAP = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}


def render(template: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The template's text for `messages` (a template error is a DataError)."""
    import jinja2

    try:
        return compile_template(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                 **SPECIAL_TOKENS_MAP)
    except jinja2.TemplateError as e:
        raise DataError(f"chat template failed to render: {e}") from None


# ----------------------------------------------------------------------------- rendering to ids
def _sentinel_base(contents: list[str]) -> str:
    """A private-use string found in no content (grows until unique; a content cannot hold a longer one)."""
    base = "\U000F0000"
    while any(base in c for c in contents):
        base += "\U000F0000"
    return base


def _content_spans(template: str, conv: Conversation,
                   add_generation_prompt: bool) -> tuple[str, list[tuple[int, int, str]]]:
    """-> (rendered text, [(start, end, role)] char span of each message's content in it)."""
    messages = to_messages(conv)
    base = _sentinel_base([m["content"] for m in messages])
    marks = [f"{base}{i}{base}" for i in range(len(messages))]
    skeleton = render(template, [dict(m, content=s) for m, s in zip(messages, marks)], add_generation_prompt)
    text, spans, pos = [], [], 0
    for mark, m in zip(marks, messages):
        at = skeleton.find(mark, pos)
        if at < 0 or skeleton.find(mark, at + len(mark)) >= 0:
            raise DataError("chat template must write each message's content exactly once, in order "
                            f"(message {len(spans)}, role {m['role']})")
        text.append(skeleton[pos:at])
        start = sum(map(len, text))
        text.append(m["content"])
        spans.append((start, start + len(m["content"]), m["role"]))
        pos = at + len(mark)
    text.append(skeleton[pos:])
    full = "".join(text)
    if full != render(template, messages, add_generation_prompt):
        raise DataError("chat template does not copy message content verbatim (it transforms or tests it); "
                        "banyan needs verbatim content to tell template tokens from text")
    return full, spans


@lru_cache(maxsize=64)
def _control_pattern(tokens: tuple[str, ...]) -> re.Pattern:
    # longest first, so a token wins over the tokens it contains
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) or "(?!)")


def _control_tokens(tok: Tokenizer) -> tuple[str, ...]:
    return tuple(sorted(t.content for t in tok.hf.get_added_tokens_decoder().values()))


def _encode_rendered(tok: Tokenizer, text: str, spans: list[tuple[int, int, str]]) -> tuple[list[int], list[bool]]:
    """Ids of `text` with control tokens matched outside `spans` only, and the trained mask.

    Trained: tokens overlapping an assistant content span, plus the first control token after that
    span, which must be END_OF_TURN.
    """
    pattern = _control_pattern(_control_tokens(tok))
    controls, lo = [], 0  # (start, end) of each control token the template wrote
    for start, end, _ in spans + [(len(text), len(text), "")]:
        controls += [(m.start() + lo, m.end() + lo) for m in pattern.finditer(text[lo:start])]
        lo = end
    assistant = [(s, e) for s, e, role in spans if role == "assistant"]
    ends_trained = set()
    for s, e in assistant:
        nxt = next(((a, b) for a, b in controls if a >= e), None)
        if nxt is None or text[nxt[0]:nxt[1]] != END_OF_TURN:
            raise DataError(f"chat template must close each assistant turn with {END_OF_TURN} "
                            f"(found {text[nxt[0]:nxt[1]] if nxt else 'nothing'!r} after the content)")
        ends_trained.add(nxt)
    # raw text between control tokens: encoded as text (specials never matched), in one batch call
    bounds = [(pos, a) for pos, a in zip([0] + [b for _, b in controls], [a for a, _ in controls] + [len(text)])]
    encoded = tok.hf.encode_batch([text[lo:hi] for lo, hi in bounds], add_special_tokens=False)
    ids: list[int] = []
    trained: list[bool] = []
    for k, ((lo, hi), enc) in enumerate(zip(bounds, encoded)):
        inside = [(s - lo, e - lo) for s, e in assistant if s < hi and e > lo]  # spans in segment coordinates
        ids += enc.ids
        if inside:  # a token is trained when it overlaps assistant content
            trained += [any(s < oe and os_ < e for s, e in inside) for os_, oe in enc.offsets]
        else:
            trained += [False] * len(enc.ids)
        if k < len(controls):
            a, b = controls[k]
            ids.append(int(tok.hf.token_to_id(text[a:b])))
            trained.append(controls[k] in ends_trained)
    return ids, trained


def encode_conversation(tok: Tokenizer, template: str, conv: Conversation) -> tuple[list[int], list[bool]]:
    """-> (ids, trained): the conversation rendered with `template`; `trained[i]` is True exactly for
    assistant content tokens and the END_OF_TURN closing each assistant turn."""
    text, spans = _content_spans(template, conv, add_generation_prompt=False)
    return _encode_rendered(tok, text, spans)


def encode_prompt(tok: Tokenizer, template: str, conv: Conversation, add_generation_prompt: bool = True) -> list[int]:
    """Ids for generation: the conversation so far plus (by default) the assistant header."""
    text, spans = _content_spans(template, conv, add_generation_prompt)
    return _encode_rendered(tok, text, [(s, e, "") for s, e, _ in spans])[0]


def check_template(tok: Tokenizer, template: str) -> None:
    """Render a probe conversation (system, user, assistant, user) so a broken template fails early;
    the contents carry edge whitespace so a template that strips content is caught too."""
    from banyan.data.chat import Turn

    probe = [Turn("system", " s\n"), Turn("user", " u "), Turn("assistant", "\na "), Turn("user", "v\n")]
    ids, trained = encode_conversation(tok, template, probe)
    if not any(trained):
        raise DataError("chat template trains nothing on a probe conversation (no assistant content?)")
    encode_prompt(tok, template, probe)


# ----------------------------------------------------------------------------- tokenizer_config.json
def write_tokenizer_config(folder: str | os.PathLike, tok: Tokenizer, chat_template: str = DEFAULT_CHAT_TEMPLATE,
                           model_max_length: int | None = None) -> Path:
    """Write `folder/tokenizer_config.json` (HF layout, beside tokenizer.json) atomically; returns its path.

    eos_token is ``<|eos|>`` (the document end of pretraining); chat generation stops at END_OF_TURN,
    so an exported generation_config should list both ids.
    """
    check_template(tok, chat_template)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **SPECIAL_TOKENS_MAP, "unk_token": None,
              "clean_up_tokenization_spaces": False, "chat_template": chat_template}
    if model_max_length:
        config["model_max_length"] = int(model_max_length)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_FILE
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_chat_template(folder: str | os.PathLike) -> str:
    """The chat template stored with a tokenizer: `chat_template.jinja`, else tokenizer_config.json's
    `chat_template` (a string, or HF's list of {name, template} where "default" is used)."""
    folder = Path(folder)
    folder = folder.parent if folder.name in (CONFIG_FILE, "tokenizer.json") else folder
    if (folder / TEMPLATE_FILE).is_file():
        return (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise DataError(f"no chat template: {path} not found (banyan data prepare writes it)")
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise DataError(f"{path}: not a JSON object ({e})") from None
    if isinstance(value, list):
        value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}: no 'chat_template' (string, or a list with a 'default' entry)")
    return value


# ----------------------------------------------------------------------------- inspection
TRAINED_ON, TRAINED_OFF = "\x1b[1;32m", "\x1b[0m"  # bold green on a terminal


def render_mask(tok: Tokenizer, ids: list[int], trained: list[bool], color: bool) -> str:
    """The decoded ids with trained runs marked: ANSI bold green when `color`, else ``[[...]]``.

    Runs of equal `trained` are decoded together so multi-byte characters stay whole inside a run.
    """
    if len(ids) != len(trained):
        raise DataError(f"render_mask: {len(ids)} ids but {len(trained)} mask values")
    on, off = (TRAINED_ON, TRAINED_OFF) if color else ("[[", "]]")
    out, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or trained[i] != trained[start]:
            text = tok.decode(ids[start:i])
            out.append(f"{on}{text}{off}" if trained[start] else text)
            start = i
    return "".join(out)
