"""A sharded checkpoint's DCP metadata is read with an allow-list: a planted pickle never runs."""

import os
import pickle

import pytest
import torch

from banyan.errors import CheckpointError
from banyan.train.safe_dcp import read_metadata_file, safe_reader


class Payload:
    """Unpickling this calls os.system: what an attacker would plant in dcp/.metadata."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _real_dcp(folder):
    import torch.distributed.checkpoint as dcp

    from banyan.train.dist_checkpoint import quiet_single_process

    with quiet_single_process():
        dcp.save({"w": torch.arange(6.0).view(2, 3), "lr": 0.5}, checkpoint_id=str(folder))
    return folder


def test_real_metadata_loads_through_the_allow_list(tmp_path):
    import torch.distributed.checkpoint as dcp

    from banyan.train.dist_checkpoint import quiet_single_process, safe_load_planner

    folder = _real_dcp(tmp_path / "dcp")
    meta = read_metadata_file(folder / ".metadata")
    assert "w" in meta.state_dict_metadata
    state = {"w": torch.zeros(2, 3), "lr": 0.0}
    with quiet_single_process():
        dcp.load(state, storage_reader=safe_reader(folder), planner=safe_load_planner())
    assert torch.equal(state["w"], torch.arange(6.0).view(2, 3)) and state["lr"] == 0.5


def test_planted_pickle_is_refused_and_never_runs(tmp_path):
    folder = _real_dcp(tmp_path / "dcp")
    marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match="refusing to load 'posix.system'|refusing to load 'os.system'"):
        safe_reader(folder)
    assert not marker.exists()


def test_resume_and_consolidate_refuse_a_planted_pickle(tmp_path, tiny_data):
    """The two verbs that open DCP checkpoints go through the safe reader."""
    from banyan.train.consolidate import consolidate

    ck = tmp_path / "run" / "checkpoints" / "step_000004"
    (ck / "dcp").mkdir(parents=True)
    marker = tmp_path / "pwned"
    (ck / "dcp" / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    (ck / "trainer.json").write_text('{"step": 4}')
    from trainkit import tiny_run

    from banyan.config import write_config

    cfg = tiny_run(tiny_data, tmp_path / "run")
    cfg.model.vocab_size = 64
    write_config(cfg, ck / "config.toml")
    with pytest.raises(CheckpointError, match="refusing to load"):
        consolidate(ck)
    from banyan.parallel.env import DistEnv
    from banyan.train import dist_checkpoint as dist_ckpt
    from banyan.train.trainer import build_parallel

    par, opt = build_parallel(cfg.finalize(), DistEnv())
    with pytest.raises(CheckpointError, match="refusing to load"):
        dist_ckpt.load(ck, par, opt, None, DistEnv())
    assert not marker.exists()


def test_truncated_metadata_is_one_clear_error(tmp_path):
    folder = _real_dcp(tmp_path / "dcp")
    data = (folder / ".metadata").read_bytes()
    (folder / ".metadata").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable DCP metadata file"):
        read_metadata_file(folder / ".metadata")


def test_no_unsafe_deserialisation_anywhere_in_banyan():
    """Every torch.load passes weights_only=True; nothing calls pickle.load/loads (the allow-list Unpickler aside)."""
    import ast
    from pathlib import Path

    bad = []
    for path in (Path(__file__).parents[2] / "banyan").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = getattr(node.func.value, "id", "")
            if owner == "pickle" and node.func.attr in ("load", "loads"):
                bad.append(f"{path.name}:{node.lineno} pickle.{node.func.attr}")
            if owner == "torch" and node.func.attr == "load":
                safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                if not safe:
                    bad.append(f"{path.name}:{node.lineno} torch.load without weights_only=True")
    assert not bad, bad
