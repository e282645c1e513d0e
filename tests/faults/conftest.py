"""Fixtures for the fault suite: one stopped run to copy and damage (tiny_data: tests/conftest.py)."""

import shutil

import pytest


@pytest.fixture(scope="session")
def stopped_run(tiny_data, tmp_path_factory):
    """A pretraining run of 8 steps with checkpoints at steps 4 and 8 (train.max_steps 12: resumable)."""
    from banyan.train.pretrain import PretrainTask
    from banyan.train.trainer import Trainer
    from faultkit import StopAt, tiny_cfg

    out = tmp_path_factory.mktemp("stopped") / "run"
    cfg = tiny_cfg(tiny_data, out)
    StopAt(8, cfg, PretrainTask(cfg)).run()
    return out


@pytest.fixture
def run_copy(stopped_run, tmp_path):
    """A private copy of `stopped_run` that a test may damage."""
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    return out
