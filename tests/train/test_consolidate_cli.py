"""`banyan checkpoint consolidate`: dataclass flags (--ckpt, --out, --dtype) like every other verb.

The merge itself (a 2-rank zero3 checkpoint into one safetensors file) is tested in
tests/parallel/test_dist_parity.py.
"""

import typing

import pytest

from banyan.cli import main as banyan
from banyan.train.checkpoint import CheckpointError
from banyan.train.consolidate import DTYPES, ConsolidateConfig, main


def test_ckpt_flag_reaches_the_checkpoint(tmp_path, capsys):
    (tmp_path / "trainer.json").write_text("{}")  # a checkpoint folder written by one process
    rc = banyan(["checkpoint", "consolidate", "--ckpt", str(tmp_path), "--dtype", "bf16"])
    err = capsys.readouterr().err
    assert rc == 2 and "not sharded" in err and str(tmp_path) in err


def test_missing_ckpt_is_named():
    with pytest.raises(CheckpointError, match="give --ckpt"):
        main([])


def test_positional_path_is_an_unknown_argument(capsys):
    with pytest.raises(SystemExit) as e:
        banyan(["checkpoint", "consolidate", "runs/x"])
    assert e.value.code == 2 and "runs/x" in capsys.readouterr().err


def test_bad_dtype_exits_2_listing_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--ckpt", "x", "--dtype", "bf17"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "bf17" in err and "fp16" in err
    assert typing.get_args(typing.get_type_hints(ConsolidateConfig)["dtype"]) == tuple(DTYPES)
