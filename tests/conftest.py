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


TINY_TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
             "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


@pytest.fixture(scope="session")
def tiny_data(make_char_corpus):
    """A tiny prepared char-level corpus (trainer and fault tests)."""
    return make_char_corpus("corpus", TINY_TEXT, 50)


@pytest.fixture
def lock_holder():
    """Factory: another process that holds banyan.io.FolderLock on `folder` (until it is killed, or the test
    ends); returns its Popen."""
    import subprocess
    import sys

    procs = []

    def hold(folder) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", "import time; from banyan.io import FolderLock; "
                              f"FolderLock({str(folder)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p

    yield hold
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()
