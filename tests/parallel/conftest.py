"""Fixtures for tests/parallel: a tiny prepared corpus, the single-process reference run, and one spawn of
2 gloo ranks that runs every in-process multi-rank scenario (see dist_helpers.worker)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dist_helpers import ACCUM_TOKENS, free_port, spawn, tiny_run, worker  # noqa: E402

TEXT = ("KING RICHARD:\nNow is the winter of our discontent made glorious summer by this sun.\n\n"
        "GLOUCESTER:\nAnd all the clouds that lour'd upon our house in the deep bosom of the ocean buried.\n\n") * 30


@pytest.fixture(scope="session")
def dist_data(make_char_corpus):
    return make_char_corpus("dist_corpus", TEXT, 40)


@pytest.fixture(scope="session")
def reference(dist_data, tmp_path_factory):
    """One process, micro_batch 4: the same global batch as 2 ranks x 2 (or 4 ranks x 1)."""
    from banyan.train.pretrain import train

    out = tmp_path_factory.mktemp("dist_ref") / "single"
    train(tiny_run(dist_data, out, 4, "single"))
    return out


@pytest.fixture(scope="session")
def reference_accum(dist_data, tmp_path_factory):
    """One process, micro_batch 4, two accumulation micro-steps per optimizer step."""
    from banyan.train.pretrain import train

    out = tmp_path_factory.mktemp("dist_ref") / "single_accum"
    train(tiny_run(dist_data, out, 4, "single", train={"global_batch_tokens": ACCUM_TOKENS}))
    return out


@pytest.fixture(scope="session")
def spawned(dist_data, reference, tmp_path_factory):
    """Run dist_helpers.worker on 2 spawned gloo ranks; returns (root folder, per-rank scenario outcomes)."""
    root = tmp_path_factory.mktemp("dist_spawned")
    spawn(worker, (2, free_port(), str(dist_data), str(root), str(reference)), nprocs=2, timeout=300)
    results = [json.loads((root / f"results_rank{r}.json").read_text()) for r in range(2)]
    return root, results
