"""TokenLoader: pure-function batches, rank disjointness, shard boundaries, val windows, errors."""

import numpy as np
import pytest
import torch
from datakit import write_fake_prepared

from banyan.data import DataError
from banyan.data.loader import TokenLoader


@pytest.fixture
def data(tmp_path):
    """Shard 0 holds ids [0, 100), shard 1 ids [100, 200): a window crossing shards would mix them."""
    rng = np.random.default_rng(0)
    train = [rng.integers(0, 100, size=700), rng.integers(100, 200, size=450)]
    val = [rng.integers(0, 200, size=1000), rng.integers(0, 200, size=333)]
    return write_fake_prepared(tmp_path / "d", {"train": train, "val": val}, vocab_size=200), train, val


def loader(d, **kw):
    args = dict(split="train", seq_len=32, micro_batch=4, seed=7)
    args.update(kw)
    return TokenLoader(d, **args)


def test_batch_shapes_and_shift(data):
    d, train, _ = data
    L = loader(d)
    x, y = L.batch(0)
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert L.vocab_size == 200 and L.n_tokens == 1150 and L.bytes_per_token == 2.0
    starts = L.window_starts(0)
    # window i of the concatenated index: the first 700-32 windows live in shard 0
    for row, g in enumerate(starts):
        shard, local = (0, g) if g < 700 - 32 else (1, g - (700 - 32))
        assert x[row].tolist() == train[shard][local:local + 32].tolist()
        assert y[row, -1] == train[shard][local + 32]


def test_windows_never_cross_shards(data):
    d, _, _ = data
    L = loader(d, micro_batch=16)
    for step in range(40):
        x, y = L.batch(step)
        full = torch.cat([x, y[:, -1:]], dim=1)
        lo = (full < 100).all(dim=1)
        hi = (full >= 100).all(dim=1)
        assert bool((lo | hi).all())


def test_deterministic_pure_function(data):
    d, _, _ = data
    a, b = loader(d), loader(d)
    for step, micro in [(0, 0), (5, 0), (5, 3), (123456, 1)]:
        assert all(torch.equal(u, v) for u, v in zip(a.batch(step, micro), b.batch(step, micro)))
    assert b.batch(9)[0].tolist() == loader(d).batch(9)[0].tolist()  # order of calls does not matter
    assert not torch.equal(a.batch(0)[0], a.batch(1)[0])
    assert not torch.equal(a.batch(1, 0)[0], a.batch(1, 1)[0])
    assert not torch.equal(a.batch(1)[0], loader(d, seed=8).batch(1)[0])


def test_ranks_disjoint_and_union_is_single_process_draw(data):
    d, _, _ = data
    B = 4
    single = loader(d, micro_batch=2 * B)
    ranks = [loader(d, micro_batch=B, rank=r, world_size=2) for r in range(2)]
    for step in range(25):
        s0 = set(ranks[0].window_starts(step)[:B].tolist())
        per_rank = [ranks[r].window_starts(step)[r * B:(r + 1) * B] for r in range(2)]
        assert set(per_rank[0].tolist()) == s0
        assert not set(per_rank[0].tolist()) & set(per_rank[1].tolist())
        assert np.array_equal(np.concatenate(per_rank), single.window_starts(step))
        x_all, _ = single.batch(step)
        assert torch.equal(torch.cat([ranks[0].batch(step)[0], ranks[1].batch(step)[0]]), x_all)


def test_val_batches_fixed_disjoint_across_ranks(data):
    d, _, val = data
    T, B = 16, 3
    ranks = [loader(d, split="val", seq_len=T, micro_batch=B, rank=r, world_size=2) for r in range(2)]
    # windows: (1000-1)//16 = 62 in shard 0, (333-1)//16 = 20 in shard 1 -> 82, 82 // (3*2) = 13 batches
    assert ranks[0].num_val_batches() == ranks[1].num_val_batches() == 13
    assert ranks[0].num_val_batches(5) == 5 and ranks[0].num_val_batches(500) == 13
    seen = []
    for r, L in enumerate(ranks):
        batches = list(L.val_batches(5))
        assert len(batches) == 5
        again = list(L.val_batches(5))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
        for x, y in batches:
            assert torch.equal(x[:, 1:], y[:, :-1])
            seen += [tuple(row) for row in torch.cat([x, y[:, -1:]], 1).tolist()]
    # 5 batches x 2 ranks x 3 rows, all distinct windows, each a stride-16 window of one val shard
    assert len(set(seen)) == len(seen) == 30
    windows = {tuple(s[k * T:k * T + T + 1].tolist()) for s in val for k in range((len(s) - 1) // T)}
    assert set(seen) <= windows
    # all available windows used when n_batches <= 0: targets never scored twice
    x_all = [x for L in ranks for x, _ in L.val_batches()]
    assert sum(x.shape[0] for x in x_all) == 13 * 6


def test_too_small_split(data):
    d, _, _ = data
    with pytest.raises(DataError, match=r"split 'train' of .* is too small: 1150 tokens \(largest shard 700\)"):
        loader(d, seq_len=699, micro_batch=4)
    with pytest.raises(DataError, match="need micro_batch\\*world_size = 8 for one validation batch"):
        loader(d, split="val", seq_len=400, micro_batch=4, world_size=2).num_val_batches()


def test_missing_folder_and_meta(tmp_path, data):
    with pytest.raises(DataError, match=r"data folder not found: .*nodata; run `banyan data prepare --out .*nodata`"):
        loader(tmp_path / "nodata")
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match=r"has no meta.json .*banyan data prepare --out"):
        loader(tmp_path / "half")
    d, _, _ = data
    with pytest.raises(DataError, match="no split 'test'"):
        loader(d, split="test")
    with pytest.raises(DataError, match="vocab size mismatch: expected 256, data has 200"):
        loader(d, expect_vocab=256)
    with pytest.raises(DataError, match=r"rank must be in \[0, world_size=2\)"):
        loader(d, rank=2, world_size=2)
    (d / "meta.json").write_text("{broken")
    with pytest.raises(DataError, match="invalid JSON"):
        loader(d)


def test_shard_missing_from_folder(data):
    d, _, _ = data
    (d / "train_000001.bin").unlink()
    with pytest.raises(DataError, match="shard not found: .*train_000001.bin"):
        loader(d)
