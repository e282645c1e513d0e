"""Exports: a full disk is one line and leaves nothing; stale temp folders of killed exports are removed."""

import errno
import os
import subprocess
import sys

import pytest

from banyan.errors import BanyanError


def test_disk_full_mid_export_is_one_line_and_leaves_no_temp(stopped_run, tmp_path, monkeypatch):
    import banyan.export.hf as hf

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hf, "write_weights", full)
    out = tmp_path / "hf"
    with pytest.raises(BanyanError, match=f"^no space left on device while writing export {out}; nothing was "
                                          "written"):
        hf.export_hf(hf.ExportHFConfig(src=str(stopped_run), out=str(out)))
    assert os.listdir(tmp_path) == []


def test_a_killed_exports_temp_folder_is_removed_and_overwrite_replaces_only_banyans(stopped_run, tmp_path,
                                                                                     capsys):
    from banyan.errors import ConfigError
    from banyan.export.gguf import ExportGGUFConfig, export_gguf
    from banyan.export.hf import ExportHFConfig, export_hf

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    stale = tmp_path / f".hf.tmp-{p.pid}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    out = tmp_path / "hf"
    export_hf(ExportHFConfig(src=str(stopped_run), out=str(out)))
    assert not stale.exists() and f"removed stale temporary {stale}" in capsys.readouterr().out
    export_hf(ExportHFConfig(src=str(stopped_run), out=str(out), overwrite=True))  # its own folder: replaced
    assert sorted(os.listdir(tmp_path)) == ["hf"]
    notes = tmp_path / "m.gguf"
    notes.write_text("my notes, not a model")
    with pytest.raises(ConfigError, match="is not a GGUF file .*refusing to replace it"):
        export_gguf(ExportGGUFConfig(src=str(stopped_run), out=str(notes), overwrite=True))
    assert notes.read_text() == "my notes, not a model"
