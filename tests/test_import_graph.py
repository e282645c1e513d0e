"""The import graph: banyan/model needs nothing from banyan.config, banyan.config loads no torch,
and `parallel.strategy auto` and `banyan plan` share the memory model without a cycle.

Each check runs in a fresh interpreter, so modules other tests imported do not hide a cycle.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_model_imports_no_banyan_config():
    out = python(
        "import sys\n"
        "import banyan.model, banyan.model.hf\n"
        "from banyan.model import GPT2, Llama, build_model, from_hf\n"
        "from banyan.model.config import ModelConfig\n"
        "m = build_model(ModelConfig(vocab_size=64, n_layer=1, d_model=32, n_head=2))\n"
        "print(type(m).__name__, sorted(k for k in sys.modules if k in ('banyan.config', 'banyan.configlib', "
        "'banyan.cli')))\n"
        "import banyan.config\n"
        "assert banyan.config.ModelConfig is ModelConfig and banyan.config.RunConfig().model == ModelConfig()\n")
    assert out.split() == ["Llama", "[]"]


def test_config_and_memory_model_load_no_torch():
    out = python("import sys, banyan.config, banyan.plan, banyan.plan.memory, banyan.model.config\n"
                 "print('torch' in sys.modules, 'banyan.plan.cli' in sys.modules)")
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("first, second", [("banyan.parallel.auto", "banyan.plan.cli"),
                                           ("banyan.plan.cli", "banyan.parallel.auto")])
def test_auto_and_plan_import_in_either_order(first, second):
    out = python(f"import {first}, {second}\n"
                 "import banyan.parallel.auto as A, banyan.plan.memory as M\n"
                 "print(A.M is M)")
    assert out.strip() == "True"
