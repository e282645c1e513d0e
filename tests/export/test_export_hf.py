"""`banyan export hf`: the folder loads offline in transformers with banyan's logits and token ids, exactly."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from banyan.cli import main as cli
from banyan.data.tokenizer import load_tokenizer
from banyan.export.hf import ExportHFConfig, export_hf
from banyan.model import from_hf

sys.path.insert(0, str(Path(__file__).parent))
from exportkit import PROBE, make_tokenizer, save_sharded, save_single, tiny_model  # noqa: E402

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """kind -> tokenizer.json: plain char and bpe, and a bpe one with a chat template beside it."""
    root = tmp_path_factory.mktemp("tok")
    return {"char": make_tokenizer("char", root / "char"), "bpe": make_tokenizer("bpe", root / "bpe"),
            "chat": make_tokenizer("bpe", root / "chat", chat=True)}


def _vocab(tok_file):
    return load_tokenizer(tok_file).vocab_size


def _ids(vocab, T=40):
    return torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(3))


def _export(src, out, **kw):
    return export_hf(ExportHFConfig(src=str(src), out=str(out), **kw))


@pytest.mark.parametrize("arch,tie,kv,bias", [("llama", False, 2, True), ("llama", True, 0, True),
                                              ("gpt2", True, 0, True), ("gpt2", True, 0, False)],
                         ids=["llama-gqa-untied", "llama-tied", "gpt2", "gpt2-no-bias"])
def test_transformers_logits_equal_banyan(tmp_path, tokenizers, arch, tie, kv, bias):
    tok_file = tokenizers["bpe"]
    model = tiny_model(arch, _vocab(tok_file), tie, kv, bias=bias)
    save_single(tmp_path / "run", model, tok_file)
    out = _export(tmp_path / "run", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [{"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}[arch]]
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (0, 1, 2)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert ("lm_head.weight" in names) == (not tie)  # a tied head is stored once, as transformers saves it
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert hf.dtype == torch.float32 and hf.config.tie_word_embeddings == tie
    x = _ids(model.config.vocab_size)
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_auto_tokenizer_ids_equal_banyan(tmp_path, tokenizers, kind):
    tok_file = tokenizers[kind]
    save_single(tmp_path / "run", tiny_model("llama", _vocab(tok_file), True), tok_file)
    out = _export(tmp_path / "run", tmp_path / "hf")
    ours, theirs = load_tokenizer(tok_file), transformers.AutoTokenizer.from_pretrained(out)
    ids = ours.encode(PROBE)
    assert theirs(PROBE)["input_ids"] == ids  # no <|bos|> prepended, same splits and byte fallback
    assert theirs.decode(ids) == PROBE == ours.decode(ids)
    assert (theirs.bos_token, theirs.eos_token, theirs.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == ours.eos_id and "chat_template" not in json.loads(
        (out / "tokenizer_config.json").read_text())


def test_chat_template_and_end_of_turn_eos_are_carried(tmp_path, tokenizers):
    tok_file = tokenizers["chat"]
    ckpt = save_single(tmp_path / "run", tiny_model("llama", _vocab(tok_file), True), tok_file)
    assert (ckpt / "tokenizer_config.json").is_file()  # the checkpoint copied it from beside tokenizer.json
    out = _export(tmp_path / "run", tmp_path / "hf")
    ours, theirs = load_tokenizer(tok_file), transformers.AutoTokenizer.from_pretrained(out)
    end, eos = ours.special_id("<|end|>"), ours.eos_id
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [end, eos]
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == end  # the config's own eos_token
    text = theirs.apply_chat_template([{"role": "user", "content": "Speak."}], tokenize=False,
                                      add_generation_prompt=True)
    assert text == "<|user|>Speak.<|end|><|assistant|>"
    assert "conversational" in (out / "README.md").read_text()


def test_bf16_export_loads_and_matches_rounded_weights(tmp_path, tokenizers):
    tok_file = tokenizers["bpe"]
    model = tiny_model("llama", _vocab(tok_file), False, 2)
    save_single(tmp_path / "run", model, tok_file)
    out = _export(tmp_path / "run", tmp_path / "hf", dtype="bf16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert hf.dtype == torch.bfloat16
    rounded = tiny_model("llama", model.config.vocab_size, False, 2)
    rounded.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})
    x = _ids(model.config.vocab_size)
    with torch.no_grad():
        ref = model(x)
        assert (hf.float()(x).logits - rounded(x)).abs().max().item() <= 1e-5  # exactly the bf16 weights
        assert (hf(x).logits.float() - ref).abs().max().item() < 0.1 * ref.abs().max().item()


def test_forced_sharding_writes_an_index_that_loads(tmp_path, tokenizers):
    tok_file = tokenizers["bpe"]
    model = tiny_model("llama", _vocab(tok_file), False, 2)
    save_single(tmp_path / "run", model, tok_file)
    out = _export(tmp_path / "run", tmp_path / "hf", max_shard_size="60KB")  # ~200 KB of fp32 weights
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and not (out / "model.safetensors").exists()
    assert all((out / s).is_file() for s in shards) and set(index["weight_map"]) == set(model.state_dict())
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    x = _ids(model.config.vocab_size)
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() <= 1e-5


def test_sharded_dcp_checkpoint_exports_without_consolidating(tmp_path, tokenizers):
    tok_file = tokenizers["char"]
    model = tiny_model("llama", _vocab(tok_file), False, 2, seed=4)
    ckpt = save_sharded(tmp_path / "run", model, tok_file)
    assert (ckpt / "dcp" / ".metadata").is_file() and not (ckpt / "model.safetensors").exists()
    out = _export(ckpt, tmp_path / "hf")
    assert not (ckpt / "model.safetensors").exists()  # the checkpoint is left as it was
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    x = _ids(model.config.vocab_size)
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch,tie", [("llama", False), ("gpt2", True)])
def test_round_trip_banyan_hf_banyan_is_bit_identical(tmp_path, tokenizers, arch, tie):
    tok_file = tokenizers["bpe"]
    model = tiny_model(arch, _vocab(tok_file), tie, 2 if arch == "llama" else 0)
    save_single(tmp_path / "run", model, tok_file)
    back = from_hf(_export(tmp_path / "run", tmp_path / "hf"))
    assert back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_model_card_reports_the_run(tmp_path, tokenizers):
    tok_file = tokenizers["bpe"]
    save_single(tmp_path / "run", tiny_model("gpt2", _vocab(tok_file), True), tok_file, step=7, tokens=7168)
    card = (_export(tmp_path / "run", tmp_path / "hf", license="apache-2.0") / "README.md").read_text()
    front = card.split("---\n")[1]
    assert 'license: "apache-2.0"' in front and "library_name: transformers" in front and "- gpt2" in front
    assert "| tokens seen | 7,168" in card and "| validation bits per byte | 2.2500 |" in card
    assert "| parameters |" in card and "```toml\n" in card and 'arch = "gpt2"' in card


# ----------------------------------------------------------------------------- bad input (CLI, exit code 2)
def test_not_a_checkpoint_is_exit_2(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    rc = cli(["export", "hf", "--src", str(tmp_path / "junk"), "--out", str(tmp_path / "hf")])
    assert rc == 2 and "no complete checkpoint" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["junk"]  # nothing written, no temp folder left


def test_existing_out_needs_overwrite_and_only_a_banyan_export_is_replaced(tmp_path, tokenizers, capsys):
    tok_file = tokenizers["bpe"]
    save_single(tmp_path / "run", tiny_model("llama", _vocab(tok_file), True), tok_file)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    rc = cli(["export", "hf", "--src", str(tmp_path / "run"), "--out", str(out)])
    assert rc == 2 and "already exists; pass --overwrite" in capsys.readouterr().err
    rc = cli(["export", "hf", "--src", str(tmp_path / "run"), "--out", str(out), "--overwrite"])
    assert rc == 2 and "holds files banyan did not write (stale.txt)" in capsys.readouterr().err
    assert os.listdir(out) == ["stale.txt"]  # the user's file is never removed
    (out / "stale.txt").unlink()
    for dtype in ("fp32", "bf16"):  # an empty folder, then banyan's own export: both replaced
        assert cli(["export", "hf", "--src", str(tmp_path / "run"), "--out", str(out), "--overwrite",
                    "--dtype", dtype]) == 0
    assert "config.json" in os.listdir(out) and "manifest.json" in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["hf", "run"]  # temp and old folders are gone
    rc = cli(["export", "hf", "--src", str(tmp_path / "run"), "--out", str(tmp_path), "--overwrite"])
    assert rc == 2 and "contains the source" in capsys.readouterr().err


def test_failure_mid_export_leaves_nothing(tmp_path, tokenizers, capsys):
    tok_file = tokenizers["bpe"]
    save_single(tmp_path / "run", tiny_model("llama", _vocab(tok_file), True), tok_file)
    rc = cli(["export", "hf", "--src", str(tmp_path / "run"), "--out", str(tmp_path / "hf"),
              "--max_shard_size", "five gigs"])
    assert rc == 2 and "--max_shard_size" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["run"]

