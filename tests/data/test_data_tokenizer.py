"""Tokenizers: exact round-trips, stable special ids, byte lengths, save/load, spec errors."""

import json

import numpy as np
import pytest
from datakit import TRICKY

from banyan.data import DataError
from banyan.data.tokenizer import (SPECIAL_TOKENS, Tokenizer, byte_level_alphabet, build_tokenizer,
                                   load_tokenizer, parse_spec)


@pytest.fixture(params=["bpe", "char"])
def tok(request, bpe_tok, char_tok):
    return bpe_tok if request.param == "bpe" else char_tok


@pytest.mark.parametrize("text", TRICKY + ["unseen: ☃ ß ∑ 𝔘 👩‍👩‍👧 Ωμέγα", "\n" * 3 + "\t \t"])
def test_round_trip_exact(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_encode_batch_matches_encode(tok):
    assert tok.encode_batch(TRICKY) == [tok.encode(t) for t in TRICKY]


def test_special_ids_stable_and_reserved(tok):
    assert tok.special_ids == {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert tok.special_id("<|assistant|>") == 4
    with pytest.raises(KeyError):
        tok.special_id("<|nope|>")


def test_special_strings_in_text_are_plain_text(tok):
    ids = tok.encode("a <|eos|> b <|user|>")
    assert not set(ids) & set(range(len(SPECIAL_TOKENS)))
    assert tok.decode([tok.eos_id]) == "<|eos|>"


def test_kinds_and_sizes(bpe_tok, char_tok, train_texts):
    # a small corpus may run out of pairs seen twice before reaching the requested 400 ids
    assert bpe_tok.kind == "bpe" and 264 < bpe_tok.vocab_size <= 400
    assert char_tok.kind == "char"
    # specials + 256 byte-fallback ids + the distinct characters of its training text
    assert char_tok.vocab_size == len(SPECIAL_TOKENS) + 256 + len(set("".join(train_texts[:10])))
    assert len(char_tok.encode("abc thee")) == len("abc thee")
    assert len(bpe_tok.encode("the king the queen")) < len("the king the queen")


def test_byte_level_alphabet_matches_hf():
    from tokenizers import pre_tokenizers

    table = byte_level_alphabet()
    assert sorted(table) == list(range(256))
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


@pytest.mark.parametrize("text", TRICKY + ["naïve café 東京 🎉 — «»"])
def test_token_bytes_sum_to_utf8_length(tok, text):
    tb = tok.token_bytes()
    assert tb.dtype == np.int64 and tb.shape == (tok.vocab_size,)
    assert tb[list(tok.special_ids.values())].sum() == 0
    ids = tok.encode(text)
    assert int(tb[ids].sum()) == len(text.encode("utf-8"))


def test_token_bytes_values(bpe_tok, char_tok):
    tb = bpe_tok.token_bytes()
    assert tb[bpe_tok.hf.token_to_id("Ġ")] == 1  # the space byte
    multi = [t for t in bpe_tok.hf.get_vocab() if len(t) >= 3 and t.isascii() and t.isalpha()][0]
    assert tb[bpe_tok.hf.token_to_id(multi)] == len(multi)
    ct = char_tok.token_bytes()
    assert ct[char_tok.hf.token_to_id("<0xF0>")] == 1
    assert ct[char_tok.hf.token_to_id("東")] == 3
    assert ct[char_tok.hf.token_to_id("🎉")] == 4


def test_save_load_round_trip(tok, tmp_path):
    path = tok.save(tmp_path / "tk")
    assert path.name == "tokenizer.json" and not list(path.parent.glob(".*tmp*"))
    for src in (path, path.parent):
        again = load_tokenizer(src)
        assert again.kind == tok.kind and again.vocab_size == tok.vocab_size
        for text in TRICKY:
            assert again.encode(text) == tok.encode(text)
        assert again.encode("<|eos|>") == tok.encode("<|eos|>")  # plain-text specials survive reload
        assert np.array_equal(again.token_bytes(), tok.token_bytes())


def test_foreign_tokenizer_gets_specials_reserved(tmp_path):
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HF(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    base = hf.get_vocab_size()
    (tmp_path / "tokenizer.json").write_text(hf.to_str())
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.vocab_size == base + len(SPECIAL_TOKENS)
    assert tok.eos_id >= base and tok.decode(tok.encode("hello 🎉")) == "hello 🎉"


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="tokenizer not found.*banyan data prepare --out"):
        load_tokenizer(tmp_path / "nowhere")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="tokenizer.json: not a valid tokenizer.json"):
        load_tokenizer(tmp_path)
    bad.write_text(json.dumps({"nope": 1}))
    with pytest.raises(DataError, match=str(bad)):
        load_tokenizer(bad)


@pytest.mark.parametrize("spec,message", [
    ("wordpiece", "unknown tokenizer spec 'wordpiece'; valid: bpe:N"),
    ("bpe:lots", "must be an integer"),
    ("bpe:100", "at least 264"),
    ("", "unknown tokenizer spec ''"),
])
def test_bad_specs(spec, message):
    with pytest.raises(DataError, match=message):
        parse_spec(spec)


def test_build_from_spec(tmp_path, train_texts, char_tok):
    assert parse_spec("bpe:512") == ("bpe", 512) and parse_spec("char") == ("char", None)
    char_tok.save(tmp_path)
    assert parse_spec(str(tmp_path)) == ("file", tmp_path / "tokenizer.json")
    reused = build_tokenizer(str(tmp_path), iter(()))
    assert reused.vocab_size == char_tok.vocab_size
    small = build_tokenizer("bpe:300", train_texts[:3])
    assert isinstance(small, Tokenizer) and small.vocab_size <= 300
