"""`banyan data prepare` folders: never delete a user's file, never replace the source, one writer at a time."""

import errno
import json
import os
import subprocess
import sys

import pytest

from banyan.data.loader import TokenLoader, read_meta
from banyan.data.prepare import PrepareConfig, prepare
from banyan.errors import BanyanError, DataError, IntegrityError


def corpus(folder, n=6):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"doc{i}.txt").write_text(f"Document number {i}.\n" + "to be or not to be, " * (20 + i))
    return folder


def run(src, out, **kw):
    return prepare(PrepareConfig(source=str(src), out=str(out), tokenizer="char", workers=1, progress=False, **kw))


def listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_folder_of_foreign_files_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "mine"
    (out / "src").mkdir(parents=True)
    (out / "meta.json").write_text('{"mine": true}')  # a meta.json banyan did not write
    (out / "thesis.txt").write_text("four years")
    (out / "src" / "main.py").write_text("print(1)")
    before = {n: (out / n).read_bytes() for n in listing(out)}
    with pytest.raises(DataError, match=r"holds files banyan did not write \(meta.json, src/main.py, thesis.txt\)"):
        run(corpus(tmp_path / "c"), out)
    assert {n: (out / n).read_bytes() for n in listing(out)} == before


def test_a_prepared_folder_with_user_files_added_is_refused_even_with_overwrite(tmp_path):
    src, out = corpus(tmp_path / "c"), tmp_path / "data"
    run(src, out)
    (out / "NOTES.md").write_text("my notes")
    (out / "run1").mkdir()
    (out / "run1" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match=r"holds files banyan did not write \(NOTES.md, run1/metrics.jsonl\)"):
        run(src, out, overwrite=True)
    assert (out / "NOTES.md").read_text() == "my notes" and (out / "run1" / "metrics.jsonl").is_file()


def test_an_existing_set_needs_overwrite_and_only_its_files_are_replaced(tmp_path):
    src, out = corpus(tmp_path / "c"), tmp_path / "data"
    first = run(src, out, shard_tokens=500)
    old_shards = first["splits"]["train"]["shards"]
    with pytest.raises(DataError, match="already holds a prepared data set; pass --overwrite"):
        run(src, out)
    again = run(src, out, overwrite=True)
    assert len(old_shards) > 1 and again["splits"]["train"]["shards"] == ["train_000000.bin"]
    assert sorted(n for n in listing(out) if n.endswith(".bin")) == ["train_000000.bin", "val_000000.bin"]
    assert (out / ".lock").is_file() and read_meta(out)["created"] == again["created"]
    listed = json.loads((out / "manifest.json").read_text())["files"]
    assert sorted(listed) == [n for n in listing(out) if n not in (".lock", "manifest.json")]


def test_a_folder_prepared_before_manifests_is_replaced_by_its_meta_json(tmp_path, capsys):
    src, out = corpus(tmp_path / "c"), tmp_path / "data"
    run(src, out)
    (out / "manifest.json").unlink()
    TokenLoader(out, "train", seq_len=8, micro_batch=2, seed=0)
    assert f"data folder {out} has no manifest.json" in capsys.readouterr().err
    run(src, out, overwrite=True)
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_out_must_stay_apart_from_the_source(tmp_path, where):
    src = corpus(tmp_path / "corpus")
    out = {"same": src, "inside": src / "prepared", "contains": tmp_path}[where]
    how = {"same": "is", "inside": "is inside", "contains": "contains"}[where]
    with pytest.raises(DataError, match=f"--out '{out}' {how} the --source"):
        run(src, out)
    assert listing(src) == [f"doc{i}.txt" for i in range(6)]


def test_a_second_prepare_into_a_busy_folder_names_the_holder(tmp_path, lock_holder):
    out = tmp_path / "data"
    holder = lock_holder(out)
    with pytest.raises(BanyanError, match=f"data folder '{out}' is in use by pid {holder.pid}"):
        run(corpus(tmp_path / "c"), out)
    assert not (out / "meta.json").exists()


def test_disk_full_while_writing_a_shard_keeps_the_previous_set(tmp_path, monkeypatch):
    import banyan.data.shards as shards

    src, out = corpus(tmp_path / "c"), tmp_path / "data"
    first = run(src, out)

    def full(path, tokens, vocab_size):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(shards, "write_shard", full)
    with pytest.raises(DataError, match=f"^no space left on device while writing data folder {out}; "
                                        "the previous prepared set is intact"):
        run(src, out, overwrite=True)
    assert read_meta(out)["created"] == first["created"] and sorted(os.listdir(tmp_path)) == ["c", "data"]
    TokenLoader(out, "train", seq_len=8, micro_batch=2, seed=0)  # verifies the manifest


def test_stale_temp_folders_of_a_killed_prepare_are_removed(tmp_path, capsys):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    stale = tmp_path / f".data.tmp-{p.pid}"
    stale.mkdir()
    (stale / "train_000000.bin").write_bytes(b"half")
    run(corpus(tmp_path / "c"), tmp_path / "data")
    assert not stale.exists() and f"removed stale temporary {stale}" in capsys.readouterr().out


def test_a_data_file_that_differs_from_the_manifest_is_refused_on_load(tmp_path):
    out = tmp_path / "data"
    meta = run(corpus(tmp_path / "c"), out)
    tok = out / "tokenizer.json"
    tok.write_text(tok.read_text() + " ")
    with pytest.raises(IntegrityError, match=r"tokenizer.json has \d+ bytes, manifest.json says"):
        TokenLoader(out, "train", seq_len=8, micro_batch=2, seed=0)
    tok.write_text(tok.read_text()[:-1])
    shard = out / meta["splits"]["val"]["shards"][0]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(IntegrityError, match=r"val_000000.bin has \d+ bytes, manifest.json says"):
        TokenLoader(out, "val", seq_len=8, micro_batch=1, seed=0)


def test_a_manifest_naming_files_outside_its_folder_is_refused(tmp_path):
    src, out = corpus(tmp_path / "c"), tmp_path / "data"
    run(src, out)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    doc = json.loads((out / "manifest.json").read_text())
    doc["files"]["../victim.txt"] = {"size": 7, "sha256": "0" * 64}
    (out / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match=r"file name '../victim.txt' is not a plain relative path"):
        run(src, out, overwrite=True)
    assert victim.read_text() == "keep me"
