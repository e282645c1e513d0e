"""Shared pytest set-up: keep runs small, offline and deterministic on 2 CPU cores."""

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)



@pytest.fixture
def one_thread():
    """One torch thread for the test (timing-free, but steadier on shared cores); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def make_char_corpus(tmp_path_factory):
    """Factory: write 6 overlapping documents cut from `text` (each starting `stride` chars later) and
    prepare them with the char tokenizer (30% of documents to val); returns the data folder."""

    def make(name: str, text: str, stride: int):
        from banyan.data.prepare import PrepareConfig, prepare

        root = tmp_path_factory.mktemp(name)
        src = root / "src"
        src.mkdir()
        for i in range(6):
            (src / f"doc{i}.txt").write_text(text[i * stride:] + f"\nDocument {i}.\n")
        out = root / "data"
        prepare(PrepareConfig(source=str(src), out=str(out), tokenizer="char", val_fraction=0.3, workers=1))
        return out

    return make
