"""Checkpoints: manifests verified on load, fallback past a damaged one, full disk, stale temp folders."""

import errno
import json
import os
import subprocess
import sys

import pytest

from banyan.errors import CheckpointError
from banyan.train import checkpoint as ckpt
from faultkit import resume, resume_point


def _flip(path, at=None):
    raw = bytearray(path.read_bytes())
    at = len(raw) - 5 if at is None else at  # inside the last tensor: the file still parses
    raw[at] ^= 0x41
    path.write_bytes(bytes(raw))


DAMAGE = {
    "model bytes altered (same size)": lambda ck: _flip(ck / "model.safetensors"),
    "model.safetensors truncated": lambda ck: (ck / "model.safetensors").write_bytes(
        (ck / "model.safetensors").read_bytes()[:1000]),
    "optimizer.pt truncated": lambda ck: (ck / "optimizer.pt").write_bytes((ck / "optimizer.pt").read_bytes()[:300]),
    "trainer.json garbage": lambda ck: (ck / "trainer.json").write_text("{not json"),
    "rng.pt missing": lambda ck: (ck / "rng.pt").unlink(),
    "manifest torn": lambda ck: (ck / "manifest.json").write_text('{"format": "banyan-man'),
}


def test_every_checkpoint_has_a_manifest_of_its_files(stopped_run):
    from banyan.manifest import sha256_file

    for ck in ckpt.list_checkpoints(stopped_run):
        doc = json.loads((ck / "manifest.json").read_text())
        assert doc["kind"] == "checkpoint" and doc["banyan_version"]
        names = sorted(p.name for p in ck.iterdir() if p.name != "manifest.json")
        assert sorted(doc["files"]) == names and "model.safetensors" in names
        for name, entry in doc["files"].items():
            assert entry["size"] == (ck / name).stat().st_size and entry["sha256"] == sha256_file(ck / name)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(tiny_data, run_copy, damage, capsys):
    DAMAGE[damage](run_copy / "checkpoints" / "step_000008")
    assert resume_point(tiny_data, run_copy) == 4
    err = capsys.readouterr().err
    assert "step_000008 is unusable" in err and "resuming from step_000004 instead" in err


def test_altered_weights_are_skipped_and_the_run_continues_from_the_older_one(tiny_data, run_copy, capsys):
    _flip(run_copy / "checkpoints" / "step_000008" / "model.safetensors")
    assert resume(tiny_data, run_copy)["step"] == 12
    assert "model.safetensors does not match its SHA-256" in capsys.readouterr().err
    rows = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 13))  # steps 5-8 re-run, logged once
    ckpt.verify_checkpoint(run_copy / "checkpoints" / "step_000008")  # written anew


def test_a_checkpoint_without_a_manifest_loads_with_a_warning(tiny_data, run_copy, capsys):
    for ck in ckpt.list_checkpoints(run_copy):
        (ck / "manifest.json").unlink()  # written by banyan before manifests
    assert resume_point(tiny_data, run_copy) == 8
    err = capsys.readouterr().err
    assert "step_000008 has no manifest.json" in err and "unusable" not in err


def test_disk_full_mid_checkpoint_is_one_line_and_leaves_latest_right(tiny_data, run_copy, monkeypatch):
    real = ckpt.torch.save

    def full_disk(obj, f, *a, **kw):
        if "step_000012" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(CheckpointError) as e:
        resume(tiny_data, run_copy)
    assert str(e.value).startswith("no space left on device while writing checkpoint step_000012; "
                                   "step_000008 is intact")
    root = run_copy / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000004", "step_000008"]  # no temp folder
    assert (root / "latest").read_text() == "step_000008"
    ckpt.verify_checkpoint(root / "step_000008")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temp_folders_are_removed_at_start(tiny_data, run_copy, capsys):
    root = run_copy / "checkpoints"
    dead = root / f"step_000012.tmp-{_dead_pid()}"
    dcp = root / "step_000016.tmp-dcp"
    for d in (dead, dcp):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    os.utime(dcp, (1, 1))  # from before this run's lock: no live writer can own it
    resume_point(tiny_data, run_copy)
    out = capsys.readouterr().out
    assert not dead.exists() and not dcp.exists()
    assert f"removed stale temporary {dead}" in out and f"removed stale temporary {dcp}" in out


def test_a_live_writers_temp_folder_is_kept(tmp_path):
    from banyan.io import remove_stale_temps

    live = tmp_path / f"step_000004.tmp-{os.getppid()}"
    live.mkdir()
    assert remove_stale_temps(tmp_path, "step_*") == [] and live.exists()


def test_sigkill_mid_checkpoint_keeps_the_previous_one_and_resumes_exactly(tiny_data, stopped_run, tmp_path):
    from faultkit import cli_flags, losses

    out = tmp_path / "killed"
    env = {**os.environ, "BANYAN_FAULT": "killsave@8", "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "banyan", *cli_flags(tiny_data, out)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]  # SIGKILLed inside the step-8 checkpoint
    root = out / "checkpoints"
    assert (root / "latest").read_text() == "step_000004" and list(root.glob("step_000008.tmp-*"))
    assert resume(tiny_data, out)["step"] == 12
    assert not list(root.glob("*.tmp-*"))
    want, got = losses(stopped_run), losses(out)
    assert sorted(got) == list(range(1, 13)) and all(got[s] == want[s] for s in range(5, 9))  # exact replay
