"""Shards: altered bytes (ids still in range) and out-of-range ids deep in a shard are one ShardError."""

import shutil

import numpy as np
import pytest

from banyan.data.shards import HEADER_SIZE, ShardError, open_shard, write_shard


def _poke(path, token_index, value, itemsize=2):
    with open(path, "r+b") as f:
        f.seek(HEADER_SIZE + token_index * itemsize)
        f.write(int(value).to_bytes(itemsize, "little"))


def test_an_out_of_range_id_past_the_first_16m_tokens_names_file_and_offset(tmp_path):
    n = (1 << 24) + 1000  # 32 MB: beyond what an open used to scan
    path = write_shard(tmp_path / "train_000000.bin", np.arange(n, dtype=np.int64) % 500, 500)
    at = n - 7
    _poke(path, at, 4000)
    with pytest.raises(ShardError, match=rf"{path}: token id 4000 >= vocab size 500 at token {at} "
                                         rf"\(byte offset {HEADER_SIZE + 2 * at}"):
        open_shard(path, expect_vocab=500)


def _copy(folder, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(folder, dst)
    return dst


def test_a_loader_refuses_a_shard_altered_within_the_vocab(tiny_data, tmp_path):
    from banyan.data.loader import TokenLoader, read_meta

    data = _copy(tiny_data, tmp_path)
    shard = data / read_meta(data)["splits"]["train"]["shards"][0]
    before = open_shard(shard)[100]
    _poke(shard, 100, (int(before) + 1) % read_meta(data)["vocab_size"])  # still a valid id
    with pytest.raises(ShardError, match=rf"{shard}: checksum mismatch"):
        TokenLoader(data, "train", seq_len=16, micro_batch=2, seed=0)


def test_training_on_a_damaged_shard_stops_before_the_first_step(tiny_data, tmp_path, capsys):
    from banyan.cli import main as cli

    data = _copy(tiny_data, tmp_path)
    shard = data / "val_000000.bin"
    _poke(shard, 3, 60000)
    code = cli(["pretrain", "--data.path", str(data), "--out", str(tmp_path / "run"), "--model.n_layer", "1",
                "--model.d_model", "32", "--model.n_head", "2", "--model.n_kv_head", "1", "--train.max_steps", "2",
                "--train.seq_len", "16", "--log.no_progress", "--log.no_tensorboard"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not (tmp_path / "run" / "checkpoints").exists()
    assert len(err) == 1 and f"{shard}: token id 60000 >= vocab size" in err[0] and "at token 3" in err[0]
