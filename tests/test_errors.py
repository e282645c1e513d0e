"""One error hierarchy at the bottom of the import graph: every user-facing error is a BanyanError, and
the lower layers (model, data, losses) import neither the CLI nor torch.distributed's process groups."""

import subprocess
import sys

import pytest

from banyan import errors


@pytest.mark.parametrize("name", ["ConfigError", "DataError", "ShardError", "CheckpointError", "TrainingDiverged"])
def test_every_error_is_a_banyan_error(name):
    assert issubclass(getattr(errors, name), errors.BanyanError)


def test_lower_layers_do_not_import_the_cli():
    code = ("import sys, banyan.model, banyan.data.loader, banyan.data.tokenizer, banyan.losses, banyan.errors; "
            "bad = [m for m in sys.modules if m in ('banyan.cli', 'banyan.train.trainer', 'banyan.parallel.wrap')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_reports_any_banyan_error_with_exit_2(capsys, monkeypatch):
    from banyan import cli

    def boom(argv):
        raise errors.ShardError("shard 'x.bin': crc mismatch")

    monkeypatch.setitem(cli.COMMANDS, "boom", ("tests_boom:fn", "test"))
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: type("M", (), {"fn": staticmethod(boom)}))
    assert cli.main(["boom"]) == 2
    assert "banyan boom: error: shard 'x.bin': crc mismatch" in capsys.readouterr().err
