"""Token shards: round-trip, header checks (each error names the file), atomic writes, ShardWriter."""

import struct

import numpy as np
import pytest

import banyan.data.shards as shards
from banyan.data.shards import (HEADER_SIZE, ShardError, ShardWriter, open_shard, read_header, write_shard)


def test_round_trip_uint16(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 2048, size=5000)
    path = write_shard(tmp_path / "a.bin", tokens, 2048)
    arr = open_shard(path, expect_vocab=2048, verify=True)
    assert isinstance(arr, np.memmap) and arr.dtype == np.uint16
    assert np.array_equal(arr, tokens)
    h = read_header(path)
    assert (h.version, h.vocab_size, h.n_tokens) == (1, 2048, 5000)
    assert path.stat().st_size == HEADER_SIZE + 2 * 5000
    assert path.read_bytes()[:8] == b"BANYANTK"


def test_round_trip_uint32_for_big_vocab(tmp_path):
    tokens = np.array([0, 65535, 65536, 99_999], dtype=np.int64)
    path = write_shard(tmp_path / "b.bin", tokens, 100_000)
    arr = open_shard(path, expect_vocab=100_000)
    assert arr.dtype == np.uint32 and arr.tolist() == tokens.tolist()
    assert write_shard(tmp_path / "c.bin", [1, 2], 65536) and open_shard(tmp_path / "c.bin").dtype == np.uint16


def _corrupt(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.fixture
def shard(tmp_path):
    return write_shard(tmp_path / "train_000000.bin", np.arange(1000) % 500, 500)


def test_wrong_magic(shard):
    _corrupt(shard, 0, b"NOTASHRD")
    with pytest.raises(ShardError, match=rf"{shard}: not a banyan token shard"):
        open_shard(shard)


def test_bad_version(shard):
    _corrupt(shard, 8, struct.pack("<I", 7))
    with pytest.raises(ShardError, match=rf"{shard}: unsupported shard format version 7"):
        open_shard(shard)


def test_bad_dtype_code(shard):
    _corrupt(shard, 12, struct.pack("<I", 9))
    with pytest.raises(ShardError, match=rf"{shard}: unknown token dtype code 9"):
        open_shard(shard)


def test_truncated(shard):
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(ShardError, match=rf"{shard}: truncated: header says 1000 tokens \(2064 bytes\), file has 2061"):
        open_shard(shard)
    shard.write_bytes(shard.read_bytes()[:20])
    with pytest.raises(ShardError, match=rf"{shard}: truncated header"):
        open_shard(shard)


def test_trailing_bytes(shard):
    shard.write_bytes(shard.read_bytes() + b"\0\0")
    with pytest.raises(ShardError, match=rf"{shard}: has trailing bytes"):
        open_shard(shard)


def test_wrong_vocab(shard):
    with pytest.raises(ShardError, match=rf"{shard}: vocab size mismatch: expected 2048, shard has 500"):
        open_shard(shard, expect_vocab=2048)


def test_out_of_range_id_and_checksum(shard):
    _corrupt(shard, HEADER_SIZE, struct.pack("<H", 60000))
    with pytest.raises(ShardError, match=rf"{shard}: token id 60000 >= vocab size 500"):
        open_shard(shard)
    _corrupt(shard, HEADER_SIZE, struct.pack("<H", 3))  # valid id, but not what was written: never trained on
    with pytest.raises(ShardError, match=rf"{shard}: checksum mismatch: CRC32 .* the header says"):
        open_shard(shard)
    assert open_shard(shard, verify=False)[0] == 3  # a diagnosis may still peek


def test_missing(tmp_path):
    with pytest.raises(ShardError, match="shard not found: .*nope.bin"):
        open_shard(tmp_path / "nope.bin")


def test_write_validates(tmp_path):
    with pytest.raises(ShardError, match=r"token ids must lie in \[0, 10\), got min 0 max 10"):
        write_shard(tmp_path / "x.bin", np.arange(11), 10)
    with pytest.raises(ShardError, match="non-empty 1-D integer"):
        write_shard(tmp_path / "x.bin", np.zeros(0, dtype=np.int64), 10)
    with pytest.raises(ShardError, match="non-empty 1-D integer"):
        write_shard(tmp_path / "x.bin", np.ones((2, 2), dtype=np.int64), 10)
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards.os, "fsync", boom)
    with pytest.raises(OSError, match="No space left"):
        write_shard(tmp_path / "new.bin", np.arange(100), 200)
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_old_shard(shard, monkeypatch):
    def boom(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(shards.os, "replace", boom)
    with pytest.raises(OSError, match="rename failed"):
        write_shard(shard, np.zeros(5, dtype=np.int64), 500)
    monkeypatch.undo()
    assert open_shard(shard, verify=True).tolist() == (np.arange(1000) % 500).tolist()
    assert [p.name for p in shard.parent.iterdir()] == [shard.name]


def test_shard_writer_splits_exactly(tmp_path):
    rng = np.random.default_rng(1)
    pieces = [rng.integers(0, 300, size=n) for n in (5, 170, 1, 333, 90, 0, 64)]
    w = ShardWriter(tmp_path, "train", vocab_size=300, shard_tokens=100)
    for p in pieces:
        w.add(p)
    files = w.close()
    total = sum(p.size for p in pieces)
    assert files == [f"train_{i:06d}.bin" for i in range(-(-total // 100))]
    sizes = [len(open_shard(tmp_path / f)) for f in files]
    assert sizes[:-1] == [100] * (len(files) - 1) and sum(sizes) == total == w.n_tokens
    joined = np.concatenate([open_shard(tmp_path / f) for f in files])
    assert np.array_equal(joined, np.concatenate(pieces))
