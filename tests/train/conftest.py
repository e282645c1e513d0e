"""Fixtures for trainer tests: a tiny prepared corpus (helpers in trainkit.py)."""

import pytest


TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


@pytest.fixture(scope="session")
def tiny_data(make_char_corpus):
    return make_char_corpus("corpus", TEXT, 50)
