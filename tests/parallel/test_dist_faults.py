"""A 2-rank gloo run SIGKILLed while a checkpoint is half-written resumes exactly from the previous one."""

import json

import pytest

from banyan.manifest import read_manifest
from dist_helpers import STEPS, child_env, cli_args, losses, run_procs, torchrun
from test_dist_launch import assert_traj


@pytest.mark.slow
def test_sigkill_mid_checkpoint_then_exact_resume(dist_data, reference, tmp_path):
    out = tmp_path / "killed"
    args = cli_args(dist_data, out, 2, "zero2")
    (r,) = run_procs([torchrun(2, args, ["--standalone"])], child_env(BANYAN_FAULT="killsave@10:rank0"), timeout=240)
    assert r.returncode != 0 and (out / ".fault-fired-rank0").read_text() == "10"
    root = out / "checkpoints"
    assert (root / "latest").read_text() == "step_000005" and (root / "step_000010.tmp-dcp" / "dcp").is_dir()
    assert read_manifest(root / "step_000005")["kind"] == "checkpoint"
    (r,) = run_procs([torchrun(2, [*args, "--resume"], ["--standalone"])], child_env(), timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming at step 5" in r.stdout and f"removed stale temporary {root / 'step_000010.tmp-dcp'}" in r.stdout
    assert_traj(losses(out), losses(reference))
    assert json.loads((out / "summary.json").read_text())["step"] == STEPS
    assert read_manifest(root / "step_000010")["files"]["dcp/.metadata"]["size"] > 0
    _consolidate_keeps_the_manifest_true(root / "step_000010", tmp_path)


def _consolidate_keeps_the_manifest_true(ck, tmp_path):
    from banyan.train.checkpoint import CheckpointError, verify_checkpoint
    from banyan.train.consolidate import consolidate

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(CheckpointError, match="exists and is not a safetensors file; refusing to replace it"):
        consolidate(ck, notes)
    with pytest.raises(CheckpointError, match="is a folder; give a file name"):
        consolidate(ck, tmp_path)
    assert notes.read_text() == "mine"
    consolidate(ck)  # in place: the manifest lists the new model.safetensors, so the folder still verifies
    assert "model.safetensors" in read_manifest(ck)["files"]
    verify_checkpoint(ck)
