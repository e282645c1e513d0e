"""scripts/compare_nanogpt.py: banyan's validation documents are exactly the text nanoGPT holds out."""

import importlib.util
from pathlib import Path

import pytest

from banyan.data.prepare import PrepareConfig, val_mask

_SPEC = importlib.util.spec_from_file_location("compare_nanogpt",
                                               Path(__file__).parents[1] / "scripts" / "compare_nanogpt.py")
compare = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(compare)


@pytest.mark.parametrize("n_paras,fraction", [(2000, 0.1), (977, 0.1), (4000, 0.05)])
def test_held_out_documents_are_nanogpts_val_text(n_paras, fraction):
    text = "\n\n".join(f"para {i} " + "x" * (i % 37) for i in range(n_paras))
    docs = compare.same_held_out_documents(text, fraction)
    held = val_mask(PrepareConfig.seed, 0, len(docs), fraction)
    val = "\n\n".join(d for d, h in zip(docs, held) if h)
    train = "\n\n".join(d for d, h in zip(docs, held) if not h)
    cut = int(len(text) * 0.9)  # nanoGPT's prepare.py split
    assert val == text[cut:] and train == text[:cut]
    assert all(docs) and 0 < held.sum() < len(docs)


def test_banyan_side_has_nanogpts_model():
    cfg = compare.banyan_config(Path("/data"), 600, "auto")
    assert 'arch = "gpt2"' in cfg and "bias = false" in cfg and "d_model = 128" in cfg
