"""banyan.io: atomic writes leave either the old file or the new one, and never a temp file."""

import json
import os

import pytest
import torch

from banyan.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, replace_dir, temp_name


def test_writes_create_parent_and_replace(tmp_path):
    p = tmp_path / "a" / "b" / "x.txt"
    assert atomic_write_text(p, "one") == p and p.read_text() == "one"
    atomic_write_text(p, "two ✓")
    assert p.read_text(encoding="utf-8") == "two ✓"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write_json(tmp_path / "d.json", {"x": [1, 2]}, indent=None)
    assert (tmp_path / "d.json").read_text() == '{"x": [1, 2]}\n'
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a", "b.bin", "d.json"]


def test_json_default_converts_and_bad_data_keeps_old_file(tmp_path):
    p = tmp_path / "d.json"
    atomic_write_json(p, {"path": tmp_path}, default=str)
    assert json.loads(p.read_text()) == {"path": str(tmp_path)}
    with pytest.raises(TypeError):
        atomic_write_json(p, {"obj": object()})
    assert json.loads(p.read_text()) == {"path": str(tmp_path)}


def test_failure_mid_write_keeps_old_file_and_removes_temp(tmp_path):
    p = tmp_path / "state.pt"
    torch.save({"v": torch.ones(2)}, p)
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(p) as tmp:
            torch.save({"v": torch.zeros(1000)}, tmp)  # a complete new file exists under the temp name...
            assert tmp.is_file()
            raise RuntimeError("disk full")  # ...and then the writer fails
    assert torch.equal(torch.load(p, weights_only=True)["v"], torch.ones(2))
    assert [q.name for q in tmp_path.iterdir()] == ["state.pt"]


def test_failure_inside_bytes_writer_keeps_old_file(tmp_path):
    p = tmp_path / "x.bin"
    atomic_write_bytes(p, b"old")

    with pytest.raises(TypeError):  # f.write refuses it after the temp file was opened
        atomic_write_bytes(p, object())
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["x.bin"]


def test_failed_rename_removes_temp(tmp_path):
    (tmp_path / "dir.txt").mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "dir.txt", "x")
    assert [q.name for q in tmp_path.iterdir()] == ["dir.txt"]


def test_temp_name_is_hidden_per_process_and_keeps_extension(tmp_path):
    t = temp_name(tmp_path / "step_00000010.safetensors")
    assert t.parent == tmp_path and t.name.startswith(".") and str(os.getpid()) in t.name
    t.touch()  # a checkpoint pruner globbing `step_*` must not see a half-written file
    assert t.suffix == ".safetensors" and not list(tmp_path.glob("step_*"))


def test_replace_dir_swaps_a_finished_folder_in(tmp_path):
    final = tmp_path / "step_000010"
    for content in ("first", "second"):
        tmp = tmp_path / f".step_000010.tmp{os.getpid()}"
        tmp.mkdir()
        (tmp / "model.bin").write_text(content)
        assert replace_dir(tmp, final) == final
        assert (final / "model.bin").read_text() == content
    assert [q.name for q in tmp_path.iterdir()] == ["step_000010"]  # neither the temp nor the old folder
