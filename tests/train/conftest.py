"""Fixtures for trainer tests: a tiny prepared corpus and a tiny model config."""

import pytest


TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from banyan.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("corpus")
    src = root / "src"
    src.mkdir()
    for i in range(6):
        (src / f"doc{i}.txt").write_text(TEXT[i * 50:] + f"\nDocument {i}.\n")
    out = root / "data"
    prepare(PrepareConfig(source=str(src), out=str(out), tokenizer="char", val_fraction=0.3, workers=1))
    return out
