"""`banyan chat`: the KV cache runs only each turn's new suffix, holds exactly the rendered conversation,
survives dropped turns, edits and Ctrl-C; --prompt mode; the REPL through a pseudo-terminal."""

import os
import pty
import re
import select
import shutil
import sys
import time

import pytest

from banyan.manifest import write_manifest
import torch

from banyan.chat import ChatConfig, ChatSession, TextStream, open_session
from banyan.data.chat import Turn
from banyan.data.chat_template import DEFAULT_CHAT_TEMPLATE, encode_prompt
from banyan.data.tokenizer import SPECIAL_TOKENS, Tokenizer, load_tokenizer
from banyan.model import ModelConfig, build_model
from banyan.train.pretrain import train
from banyan.train.sample import GenerationFlags

from trainkit import tiny_run

# a template that writes the message count first: every turn changes position 1 (not prefix-stable)
COUNTING_TEMPLATE = DEFAULT_CHAT_TEMPLATE.replace("{{- bos_token -}}", "{{- bos_token -}}{{- messages|length -}}", 1)


@pytest.fixture(scope="module")
def tok(tiny_data):
    return load_tokenizer(tiny_data)


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("chat") / "run"
    train(tiny_run(tiny_data, out, max_steps=4, eval_every=0))
    return out


def plain_model(tok, max_seq_len=256):
    """A random Llama whose logits for the specials but <|end|> and for the byte-fallback ids are -inf: its
    replies are characters of the vocabulary, which re-encode to the same ids."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="llama", vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_kv_head=1,
                                    d_model=32, max_seq_len=max_seq_len)).eval()
    banned = torch.zeros(tok.vocab_size, dtype=torch.bool)
    banned[:len(SPECIAL_TOKENS) + 256] = True
    banned[tok.special_id("<|end|>")] = False
    model.register_forward_hook(lambda m, args, out: out.masked_fill(banned, float("-inf")))
    fed = []  # positions run through the model, per call
    model.register_forward_pre_hook(lambda m, args: fed.append(args[0].size(1)))
    return model, fed


def session(model, tok, template=DEFAULT_CHAT_TEMPLATE, system="", max_new_tokens=12):
    notes = []
    flags = GenerationFlags(max_new_tokens=max_new_tokens, temperature=0.0)
    return ChatSession(model, tok, template, system, flags, None, notes.append), notes


def assert_cache_holds(s, model):
    """The session's cache holds exactly the K/V a fresh prefill of `s.cached` gives."""
    n = len(s.cached)
    fresh = model.make_cache(1)
    model.prefill(torch.tensor([s.cached]), fresh)
    for layer in range(model.config.n_layer):
        assert torch.allclose(s.cache.k[layer][:, :, :n], fresh.k[layer][:, :, :n], atol=1e-5)
        assert torch.allclose(s.cache.v[layer][:, :, :n], fresh.v[layer][:, :, :n], atol=1e-5)


def greedy_reply(model, tok, ids, n):
    """model.generate's greedy text after `ids`, up to the first <|end|> or <|eos|>."""
    out = model.generate(torch.tensor([ids]), n, temperature=0)[0, len(ids):].tolist()
    stops = [i for i, t in enumerate(out) if t in (tok.special_id("<|end|>"), tok.eos_id)]
    return tok.decode(out[:stops[0]] if stops else out)


def test_each_turn_runs_only_the_new_suffix(tok):
    model, fed = plain_model(tok)
    s, notes = session(model, tok, system="You are ROMEO.")
    first, _ = s.reply("Good morrow.")
    turn1 = encode_prompt(tok, DEFAULT_CHAT_TEMPLATE, [Turn("system", "You are ROMEO."), Turn("user", "Good morrow.")])
    assert fed[0] == len(turn1) and first == greedy_reply(model, tok, turn1, 12)
    held = list(s.cached)
    fed.clear()
    second, _ = s.reply("What news?")
    ids2 = encode_prompt(tok, DEFAULT_CHAT_TEMPLATE, s.turns[:-1])
    assert ids2[:len(held)] == held  # the template renders prefix-stably: the cache + the new suffix
    assert fed[0] == len(ids2) - len(held) and sum(fed) == len(s.cached) - len(held)  # each position once
    assert second == greedy_reply(model, tok, ids2, 12)
    assert_cache_holds(s, model)
    assert notes == []


def test_a_template_that_is_not_prefix_stable_re_reads_from_the_change(tok):
    model, fed = plain_model(tok)
    s, notes = session(model, tok, template=COUNTING_TEMPLATE)
    s.reply("Good morrow.")
    fed.clear()
    second, _ = s.reply("What news?")
    ids2 = encode_prompt(tok, COUNTING_TEMPLATE, s.turns[:-1])
    assert fed[0] == len(ids2) - 1  # only <|bos|> was still valid
    assert second == greedy_reply(model, tok, ids2, 12)
    assert_cache_holds(s, model)
    assert len(notes) == 1 and "position 1" in notes[0]
    s.reply("And then?")
    assert len(notes) == 1  # said once


def test_full_context_drops_oldest_exchanges_keeps_system(tok):
    model, fed = plain_model(tok, max_seq_len=96)
    s, notes = session(model, tok, system="Be brief.", max_new_tokens=16)
    for i in range(6):
        s.reply(f"Question number {i}?")
    assert any("dropped the oldest" in n for n in notes)
    assert s.turns[0] == Turn("system", "Be brief.") and s.turns[-2] == Turn("user", "Question number 5?")
    assert len(s.turns) < 13 and len(s.cached) <= 96
    assert_cache_holds(s, model)
    with pytest.raises(Exception, match="positions with the system prompt"):
        s.reply("x" * 200)


def test_ctrl_c_keeps_the_partial_reply_and_the_cache_consistent(tok):
    model, _ = plain_model(tok)
    s, _ = session(model, tok, max_new_tokens=20)
    seen = []

    def stop_after_three(text):
        seen.append(text)
        if len(seen) == 3:
            raise KeyboardInterrupt

    text, why = s.reply("Speak.", stop_after_three)
    assert why == "interrupted" and s.turns[-1] == Turn("assistant", text) and text.startswith("".join(seen))
    assert_cache_holds(s, model)
    reply, _ = s.reply("Again.")
    assert reply == greedy_reply(model, tok, encode_prompt(tok, DEFAULT_CHAT_TEMPLATE, s.turns[:-1]), 20)
    assert_cache_holds(s, model)


def test_reset_and_system_edit_reuse_the_common_prefix(tok):
    model, fed = plain_model(tok)
    s, _ = session(model, tok, system="You are JULIET.")
    s.reply("Hello.")
    s.reset()
    assert s.turns == [Turn("system", "You are JULIET.")]
    fed.clear()
    s.reply("Hello.")  # same first turn: everything but the last header token is already cached
    assert fed[0] == 1
    s.set_system("You are NURSE.")
    assert s.turns[0] == Turn("system", "You are NURSE.") and len(s.turns) == 3
    reply, _ = s.reply("Hello?")
    ids = encode_prompt(tok, DEFAULT_CHAT_TEMPLATE, s.turns[:-1])
    assert reply == greedy_reply(model, tok, ids, 12)
    assert_cache_holds(s, model)


def test_text_stream_prints_multibyte_characters_whole():
    tok = Tokenizer.train_char(["abc"])
    ids = tok.encode("aé€b")  # é and € are not in the vocabulary: 2 and 3 byte-fallback ids
    assert len(ids) == 1 + 2 + 3 + 1
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids]
    assert pieces == ["a", "", "é", "", "", "€", "b"] and stream.flush() == ""


# ----------------------------------------------------------------------------- the CLI
def chat_cli(args, capsys):
    """`banyan chat ARGS` through the CLI's own entry point, in this process: (exit code, stdout, stderr)."""
    from banyan.cli import main

    rc = main(["chat", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_prompt_mode_prints_only_the_reply(run, capsys):
    rc, out, err = chat_cli(["--ckpt", str(run), "--prompt", "Who art thou?", "--temperature", "0",
                             "--max_new_tokens", "10", "--system", "You are ROMEO."], capsys)
    assert rc == 0, err
    model, tok = open_session(ChatConfig(ckpt=str(run)), print).model, load_tokenizer(run / "checkpoints/step_000004")
    ids = encode_prompt(tok, DEFAULT_CHAT_TEMPLATE, [Turn("system", "You are ROMEO."), Turn("user", "Who art thou?")])
    assert out == greedy_reply(model, tok, ids, 10) + "\n" and err == ""


def test_a_sharded_checkpoint_chats_like_its_single_file_twin(run, tmp_path, capsys):
    import torch.distributed.checkpoint as dcp

    from banyan.train.dist_checkpoint import quiet_single_process

    single = run / "checkpoints" / "step_000004"
    sharded = tmp_path / "sharded"
    shutil.copytree(single, sharded)
    model = open_session(ChatConfig(ckpt=str(single)), print).model
    (sharded / "model.safetensors").unlink()
    with quiet_single_process():
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(sharded / "dcp"))
    write_manifest(sharded, "checkpoint")  # the files changed: a stale manifest would (rightly) refuse them
    args = ["--prompt", "Speak.", "--temperature", "0", "--max_new_tokens", "8"]
    replies = [chat_cli(["--ckpt", str(c), *args], capsys)[:2] for c in (single, sharded)]
    assert replies[0] == replies[1] and replies[0][0] == 0 and replies[0][1].strip()


def test_missing_template_falls_back_to_the_default_and_says_so(run, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run / "checkpoints" / "step_000004", ckpt)
    (ckpt / "tokenizer_config.json").unlink()
    write_manifest(ckpt, "checkpoint")  # a checkpoint that never had one (a stale manifest refuses it)
    rc, _, err = chat_cli(["--ckpt", str(ckpt), "--prompt", "Hi", "--max_new_tokens", "4"], capsys)
    assert rc == 0, err
    assert err.count("using banyan's default template") == 1


def test_bad_ckpt_exits_2_with_one_line(run, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run / "checkpoints" / "step_000004", broken)
    (broken / "tokenizer_config.json").write_text('{"chat_template": "{% for m in messages %}"}')
    write_manifest(broken, "checkpoint")  # the template itself is what is broken, not the files
    for bad in (tmp_path / "nowhere", tmp_path, broken):
        rc, out, err = chat_cli(["--ckpt", str(bad), "--prompt", "Hi"], capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and out == "" and len(lines) == 1, (bad, err)
        assert lines[0].startswith("banyan chat: error:") and (str(bad) in lines[0] or "template" in lines[0])


@pytest.mark.parametrize("flag, value", [("--temperature", "-1"), ("--top_p", "0"), ("--max_new_tokens", "0")])
def test_bad_sampling_flag_exits_2_naming_it(run, flag, value, capsys):
    rc, _, err = chat_cli(["--ckpt", str(run), "--prompt", "Hi", flag, value], capsys)
    assert rc == 2 and f"{flag} must be" in err and value in err


def test_repl_commands_and_eof(tok, capsys):
    from banyan.chat import repl

    model, _ = plain_model(tok)
    s, notes = session(model, tok, max_new_tokens=4)
    lines = iter(["Hello.", "/system You are PUCK.", "/bogus", "", "Again."])

    def read(prompt):
        print(prompt, end="")
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    assert repl(s, read) == 0
    out = capsys.readouterr().out
    assert out.count("user> ") == 6 and out.count("assistant> ") == 2
    assert [t.role for t in s.turns] == ["system", "user", "assistant", "user", "assistant"]
    assert any("unknown command /bogus" in n for n in notes)


class Pty:
    """`banyan chat` on a pseudo-terminal (its controlling terminal, so ^C is a SIGINT)."""

    def __init__(self, args):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.environ["OMP_NUM_THREADS"] = "1"
            os.execv(sys.executable, [sys.executable, "-m", "banyan", "chat", *args])
        self.seen = ""

    def expect(self, text, timeout=90):
        end = time.time() + timeout
        while text not in self.seen:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, end - time.time()))
            if not ready:
                raise AssertionError(f"timed out waiting for {text!r}; got {self.seen!r}")
            try:
                self.seen += os.read(self.fd, 4096).decode("utf-8", "replace")
            except OSError:  # the child exited
                raise AssertionError(f"exited before {text!r}; got {self.seen!r}") from None
        at = self.seen.index(text) + len(text)
        before, self.seen = self.seen[:at], self.seen[at:]
        return before

    def send(self, text):
        os.write(self.fd, text.encode())

    def exit_code(self, timeout=30):
        end = time.time() + timeout
        while time.time() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            try:
                if select.select([self.fd], [], [], 0.1)[0]:
                    os.read(self.fd, 4096)
            except OSError:
                pass
        os.kill(self.pid, 9)
        raise AssertionError("chat did not exit")


def test_repl_through_a_pty(run):
    chat = Pty(["--ckpt", str(run), "--max_new_tokens", "6", "--temperature", "0", "--system", "You are ROMEO."])
    chat.expect("user> ")
    chat.send("\x03")  # Ctrl-C at the prompt: a fresh prompt, not an exit
    chat.expect("^C")
    chat.expect("user> ")
    replies = []
    for line, answer in [("Good morrow.", "assistant> "), ("/system You are JULIET.", "[system prompt set"),
                         ("What news?", "assistant> "), ("/reset", "[new conversation]"),
                         ("Good morrow.", "assistant> ")]:
        chat.send(line + "\n")
        chat.expect(answer)
        replies.append(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", chat.expect("user> ")[:-6]).replace("\r\n", "\n"))
    chat.send("/quit\n")
    assert chat.exit_code() == 0
    model, tok = open_session(ChatConfig(ckpt=str(run)), print).model, load_tokenizer(run / "checkpoints/step_000004")
    ids = encode_prompt(tok, DEFAULT_CHAT_TEMPLATE, [Turn("system", "You are ROMEO."), Turn("user", "Good morrow.")])
    assert replies[0] == greedy_reply(model, tok, ids, 6) + "\n"  # streamed piece by piece, the same text
