"""`banyan data prepare` as a user runs it: success prints a summary; bad input is one line, exit 2."""

import subprocess
import sys

import pytest
from datakit import write_corpus


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "banyan", "data", "prepare", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_cli_prepares_folder(tmp_path):
    write_corpus(tmp_path / "src", n_docs=5)
    r = cli("--source", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--tokenizer", "char",
            "--workers", "1", "--no_progress")
    assert r.returncode == 0, r.stderr
    assert f"-> {tmp_path / 'out'}" in r.stdout and "train" in r.stdout and "MB/s" in r.stdout
    assert (tmp_path / "out" / "meta.json").is_file()


@pytest.mark.parametrize("args,message", [
    (["--source", "/no/such/corpus.txt"], "source not found: /no/such/corpus.txt"),
    (["--tokenizer", "wordpiece"], "unknown tokenizer spec 'wordpiece'; valid: bpe:N"),
    (["--val_fraction", "0.9"], "val_fraction must be in (0, 0.5]"),
])
def test_cli_bad_input_one_line(tmp_path, args, message):
    r = cli("--out", str(tmp_path / "out"), *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("banyan data prepare: error:") and message in lines[0]
    assert not (tmp_path / "out").exists()
