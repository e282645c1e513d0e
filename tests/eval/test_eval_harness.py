"""lm-eval adapter: BanyanLM answers lm-eval's requests with banyan's scorer, and the real `lm_eval` CLI
on a local task YAML gets the accuracy `banyan eval` gets on the same items."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from banyan.cli import main as cli  # noqa: E402
from banyan.eval.harness import BanyanLM  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from evalkit import arc_records, make_run, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TASK_YAML = """task: banyan_tiny_arc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("harness"))


def req(kind: str, args: tuple, i: int = 0) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=i)


def test_registered_under_banyan():
    from lm_eval.api.registry import get_model

    assert get_model("banyan") is BanyanLM


def test_requests_go_through_the_scorer(run):
    lm = BanyanLM(path=str(run), batch_size=2, device="cuda:0")  # lm_eval's default device falls back to the CPU
    s = lm.scorer
    pairs = [("First Citizen: ", "speak"), ("All:", " Speak, speak."), ("", "Before")]
    got = lm.loglikelihood([req("loglikelihood", p, i) for i, p in enumerate(pairs)])
    assert got == s.loglikelihood([s.encode_pair(*p) for p in pairs])
    text = "Before we proceed any further, hear me speak. " * 4
    assert lm.loglikelihood_rolling([req("loglikelihood_rolling", (text,))]) == s.rolling([text])
    outs = lm.generate_until([req("generate_until", ("First Citizen:", {"until": ["."], "max_gen_toks": 8})),
                              req("generate_until", ("All:", {"until": "\n", "max_gen_toks": 8}), 1)])
    assert outs == [s.generate([s.tok.encode("First Citizen:")], 8, stop=["."])[0],
                    s.generate([s.tok.encode("All:")], 8, stop=["\n"])[0]]
    assert "." not in outs[0] and "\n" not in outs[1]


@pytest.mark.slow
def test_lm_eval_cli_agrees_with_banyan_eval(run, tmp_path):
    data = write_jsonl(tmp_path / "arc.jsonl", arc_records(10))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny.yaml").write_text(TASK_YAML.format(data=data))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "banyan.eval.harness", "--model", "banyan", "--model_args",
                        f"path={run}", "--batch_size", "4", "--tasks", "banyan_tiny_arc", "--include_path",
                        str(tmp_path / "tasks"), "--output_path", str(tmp_path / "lm")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    result_file = next((tmp_path / "lm").rglob("results_*.json"))
    theirs = json.loads(result_file.read_text())["results"]["banyan_tiny_arc"]
    out = tmp_path / "ours.json"
    assert cli(["eval", "--model", str(run), "--tasks", f"arc:{data}", "--log.no_progress", "--json_out", str(out)]) == 0
    ours = json.loads(out.read_text())["results"][f"arc:{data}"]
    assert theirs["acc,none"] == pytest.approx(ours["acc"]) and theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"])
