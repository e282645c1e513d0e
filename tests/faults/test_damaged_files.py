"""Damaged inputs: a parquet file with corrupt data pages, a sharded checkpoint with a truncated or
corrupt `.distcp` shard. Each is one line on stderr naming the file, exit code 2, nothing written.

On main each was a pyarrow OSError or a torch CheckpointException traceback (issue 16, item 10).
"""

import sys
from pathlib import Path

import pytest

from banyan.cli import main as cli

sys.path.insert(0, str(Path(__file__).parents[1] / "export"))
from exportkit import make_tokenizer, save_sharded, tiny_model  # noqa: E402


def one_line(capsys, argv):
    """(exit code, stderr lines other than the 'no manifest' warning of these hand-made checkpoints)."""
    rc = cli(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if line and not (line.startswith("warning: checkpoint") and "manifest" in line)]
    return rc, err


@pytest.mark.parametrize("compression", ["snappy", "none"])
def test_corrupt_parquet_pages_are_one_line(tmp_path, capsys, compression):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "docs.parquet"
    texts = [f"doc {i} " + "lorem ipsum dolor sit amet " * (5 + i % 30) for i in range(2000)]
    pq.write_table(pa.table({"text": texts}), src, compression=compression, row_group_size=500,
                   data_page_size=4096)
    data = bytearray(src.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 200):  # inside the data pages; the footer stays intact
        data[i] ^= 0x5A
    src.write_bytes(bytes(data))
    pq.ParquetFile(src)  # the file still opens: only reading its pages fails
    out = tmp_path / "data"
    rc, err = one_line(capsys, ["data", "prepare", "--source", str(src), "--out", str(out), "--tokenizer", "char",
                                "--workers", "1"])
    assert rc == 2 and len(err) == 1, err
    assert f"{src}: parquet read failed after row" in err[0] and "the file is damaged" in err[0]
    assert not out.exists()


@pytest.fixture
def sharded(tmp_path):
    from banyan.data.tokenizer import load_tokenizer

    tok = make_tokenizer("char", tmp_path / "tok")
    ck = save_sharded(tmp_path / "run", tiny_model("llama", load_tokenizer(tok).vocab_size, tie=False), tok)
    return ck, ck / "dcp" / "__0_0.distcp"


VERBS = [["checkpoint", "consolidate", "--ckpt", "{ck}", "--out", "{tmp}/merged"],
         ["export", "hf", "--src", "{ck}", "--out", "{tmp}/hf"],
         ["sample", "--ckpt", "{ck}", "--max_new_tokens", "2"]]


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: v[0])
def test_truncated_distcp_is_one_line_naming_the_shard(sharded, tmp_path, capsys, verb):
    ck, shard = sharded
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])
    argv = [a.format(ck=ck, tmp=tmp_path) for a in verb]
    rc, err = one_line(capsys, argv)
    assert rc == 2 and len(err) == 1, err
    assert f"{shard} is truncated ({size // 2} bytes; its metadata needs " in err[0]
    assert not (tmp_path / "merged").exists() and not (tmp_path / "hf").exists()


def test_missing_distcp_is_named(sharded, tmp_path):
    from banyan.errors import CheckpointError
    from banyan.train.safe_dcp import safe_reader

    ck, shard = sharded
    safe_reader(ck / "dcp")  # intact: no complaint
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard} is missing"):
        safe_reader(ck / "dcp")


def test_corrupt_distcp_of_the_right_size_is_one_line(sharded, tmp_path, capsys):
    ck, shard = sharded
    data = bytearray(shard.read_bytes())
    for i in range(len(data) - 300, len(data) - 100):  # the zip directory at the end of the shard
        data[i] ^= 0x5A
    shard.write_bytes(bytes(data))
    rc, err = one_line(capsys, ["checkpoint", "consolidate", "--ckpt", str(ck), "--out", str(tmp_path / "m")])
    assert rc == 2 and len(err) == 1, err
    assert f"checkpoint {ck} could not be loaded" in err[0] and "RuntimeError: PytorchStreamReader" in err[0]


def test_a_checkpoint_exception_from_any_verb_is_one_line(capsys, monkeypatch):
    """The CLI's fallback for DCP's CheckpointException (a BaseException) raised outside consolidate."""
    from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

    import banyan.train.sample as sample

    def boom(argv):
        try:
            raise RuntimeError("PytorchStreamReader failed reading zip archive\nmore detail")
        except RuntimeError as e:
            raise CheckpointException("load", {0: _wrap_exception(e)}) from None

    monkeypatch.setattr(sample, "main", boom)
    rc, err = one_line(capsys, ["sample"])
    assert rc == 2 and err == ["banyan sample: error: a sharded checkpoint could not be read (RuntimeError: "
                               "PytorchStreamReader failed reading zip archive); it may be damaged: copy it again "
                               "or use an earlier checkpoint"]
