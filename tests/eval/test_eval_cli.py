"""`banyan eval`: task readers, metrics against a direct computation, HF folder = banyan run, bad input."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from banyan.cli import main as cli
from banyan.eval import tasks as T
from banyan.eval.run import load_eval_model
from banyan.eval.scoring import Scorer, cut_at_stop

sys.path.insert(0, str(Path(__file__).parent))
from evalkit import arc_records, hellaswag_records, make_run, piqa_records, write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    run = make_run(root)
    files = {"arc": write_jsonl(root / "arc.jsonl", arc_records()),
             "piqa": write_jsonl(root / "piqa.jsonl", piqa_records()),
             "hellaswag": write_jsonl(root / "hs.jsonl", hellaswag_records())}
    return root, run, files


def eval_json(tmp_path, *args) -> dict:
    out = tmp_path / "r.json"
    assert cli(["eval", "--log.no_progress", "--json_out", str(out), *args]) == 0
    return json.loads(out.read_text())["results"]


def direct_mc(scorer: Scorer, items: list[T.MCItem]) -> dict[str, float]:
    """acc / acc_norm from one unbatched forward per (item, choice)."""
    acc = norm = 0
    for it in items:
        lls = []
        for c in it.choices:
            ctx, cont = scorer.encode_pair(it.context, " " + c)
            full = ctx + cont
            with torch.no_grad():
                logp = torch.log_softmax(scorer.model(torch.tensor([full[:-1]]))[0], -1)[-len(cont):]
            lls.append(logp.gather(1, torch.tensor(cont)[:, None]).sum().item())
        acc += max(range(len(lls)), key=lls.__getitem__) == it.gold
        norm += max(range(len(lls)), key=lambda j: lls[j] / len(it.choices[j])) == it.gold
    return {"acc": acc / len(items), "acc_norm": norm / len(items)}


def test_hellaswag_preprocessing_as_lm_eval():
    rec = hellaswag_records(1)[0]
    item = T.hellaswag_item(rec, "x:1")
    assert item.context == "Citizens: Before we proceed. any further 0. You are all"
    assert item.choices == ["resolved rather to die", "to famish?", "speak, speak.", "apples"] and item.gold == 0
    utils = pytest.importorskip("lm_eval.tasks.hellaswag.utils")
    datasets = pytest.importorskip("datasets")
    ref = utils.process_docs(datasets.Dataset.from_list([rec]))[0]
    assert (item.context, item.choices, item.gold) == (ref["query"], ref["choices"], int(ref["gold"]))


def test_mc_metrics_equal_a_direct_computation(setup, tmp_path):
    root, run, files = setup
    specs = [f"{k}:{v}" for k, v in files.items()]
    got = eval_json(tmp_path, "--model", str(run), "--tasks", ",".join(specs), "--batch_size", "5")
    em = load_eval_model(run, torch.device("cpu"))
    scorer = Scorer(em.model, em.tok)
    for spec, (name, path) in zip(specs, files.items()):
        ref = direct_mc(scorer, T.read_mc(name, path))
        assert got[spec]["acc"] == pytest.approx(ref["acc"]) and got[spec]["acc_norm"] == pytest.approx(ref["acc_norm"])
        assert got[spec]["acc_bytes"] == got[spec]["acc_norm"]  # ASCII: bytes = characters
        assert got[spec]["items"] == len(T.read_mc(name, path)) and got[spec]["items_per_s"] > 0
    limited = eval_json(tmp_path, "--model", str(run), "--tasks", specs[0], "--limit", "3")
    assert limited[specs[0]]["items"] == 3


def test_exact_match_raw_and_chat(setup, tmp_path):
    root, run, _ = setup
    from banyan.data.chat import Turn
    from banyan.data.chat_template import encode_prompt

    em = load_eval_model(run, torch.device("cpu"))
    assert em.chat_template is not None
    stops = Scorer(em.model, em.tok).stop_ids()
    prompts = ["First Citizen:", "All:", "Speak"]

    def greedy(ids):  # model.generate, cut at the first stop id and newline
        out = em.model.generate(torch.tensor([ids]), 16, temperature=0.0)[0, len(ids):].tolist()
        out = out[:next((i for i, t in enumerate(out) if t in stops), len(out))]
        return cut_at_stop(em.tok.decode(out), ["\n"]).strip()

    for name, encode in (("em", em.tok.encode), ("em-chat", lambda p: encode_prompt(em.tok, em.chat_template,
                                                                                      [Turn("user", p)]))):
        answers = [greedy(encode(p)) for p in prompts]
        recs = [{"prompt": p, "answer": a if i != 1 else a + "zz"} for i, (p, a) in enumerate(zip(prompts, answers))]
        f = write_jsonl(tmp_path / f"{name}.jsonl", recs)
        r = eval_json(tmp_path, "--model", str(run), "--tasks", f"{name}:{f}", "--max_new_tokens", "16")
        assert r[f"{name}:{f}"]["exact_match"] == pytest.approx(2 / 3)


def test_bpb_equals_evaluate_lm_by_hand(tmp_path, make_char_corpus):
    from banyan.data.loader import TokenLoader
    from banyan.data.metrics import bits_per_byte
    from exportkit import save_single, tiny_model

    data = make_char_corpus("evalbpb", "Before we proceed any further, hear me speak.\n" * 30, 40)
    loader = TokenLoader(data, "val", seq_len=48, micro_batch=2, seed=0)
    model = tiny_model("gpt2", loader.vocab_size, tie=True)
    save_single(tmp_path / "run", model, data / "tokenizer.json")
    r = eval_json(tmp_path, "--model", str(tmp_path / "run"), "--tasks", f"bpb:{data}", "--batch_size", "2",
                  "--seq_len", "48")[f"bpb:{data}"]
    nats = n_tok = n_bytes = 0.0
    for x, y in loader.val_batches():
        with torch.no_grad():
            nats += torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item()
        n_tok += y.numel()
        n_bytes += loader.token_bytes[y].sum().item()
    assert r["loss"] == pytest.approx(nats / n_tok, rel=1e-5)
    assert r["bpb"] == pytest.approx(bits_per_byte(nats, int(n_bytes)), rel=1e-5) and math.isfinite(r["bpb"])


def test_hf_folder_scores_like_the_run(setup, tmp_path):
    pytest.importorskip("transformers")
    root, run, files = setup
    hf = tmp_path / "hf"
    assert cli(["export", "hf", "--src", str(run), "--out", str(hf)]) == 0
    spec = f"arc:{files['arc']}"
    a = eval_json(tmp_path, "--model", str(run), "--tasks", spec)[spec]
    b = eval_json(tmp_path, "--model", str(hf), "--tasks", spec)[spec]
    assert (a["acc"], a["acc_norm"]) == (b["acc"], b["acc_norm"])


@pytest.mark.parametrize("name, record, message", [
    ("arc", "{not json", ":2: malformed JSON"),
    ("piqa", {"goal": "g", "sol1": "a", "sol2": "b", "label": 2}, ":2: 'label' 2 is out of range for 2 choices"),
    ("hellaswag", {"ctx": "c", "endings": ["a", "b"], "label": -1}, ":2: 'label' -1 is out of range"),
    ("arc", {"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "E"},
     ":2: answerKey 'E' is not one of the choice labels"),
    ("em", {"prompt": "p"}, ":2: missing field 'answer'"),
])
def test_bad_task_file_names_file_and_line(setup, tmp_path, capsys, name, record, message):
    root, run, _ = setup
    good = {"arc": arc_records(1)[0], "piqa": piqa_records(1)[0], "hellaswag": hellaswag_records(1)[0],
            "em": {"prompt": "p", "answer": "a"}}[name]
    f = write_jsonl(tmp_path / "bad.jsonl", [good, record])
    assert cli(["eval", "--model", str(run), "--tasks", f"{name}:{f}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{f}{message}" in err


@pytest.mark.parametrize("args, message", [
    (["--tasks", "mmlu:x.jsonl"], "unknown task 'mmlu'"),
    (["--tasks", "arc"], "task 'arc' needs a path"),
    (["--tasks", "arc:/nonexistent.jsonl"], "task file /nonexistent.jsonl does not exist"),
])
def test_bad_task_spec_exits_2(setup, capsys, args, message):
    assert cli(["eval", "--model", str(setup[1]), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_model_that_is_not_a_model_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["eval", "--model", str(tmp_path / "empty"), "--tasks", "arc:x.jsonl"]) == 2
    assert "error" in capsys.readouterr().err


def test_results_are_recorded_with_the_run_and_reach_the_model_card(setup, tmp_path):
    from banyan.eval.record import read_results
    from banyan.export.source import load_source

    root, run, files = setup
    spec = f"arc:{files['arc']}"
    got = eval_json(tmp_path, "--model", str(run), "--tasks", spec, "--limit", "4")
    src = load_source(run)
    assert src.run_dir is not None
    kept = read_results(src.run_dir, src.ckpt)[spec]
    assert kept["acc"] == got[spec]["acc"] and kept["limit"] == 4 and "seconds" not in kept
    eval_json(tmp_path, "--model", str(run), "--tasks", spec, "--limit", "2")  # same task again: replaced
    assert read_results(src.run_dir, src.ckpt)[spec]["limit"] == 2
    assert cli(["export", "hf", "--src", str(run), "--out", str(tmp_path / "hf")]) == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "## Evaluation" in card and f"| `{spec}` | acc |" in card
    before = (src.run_dir / "evals").stat().st_mtime_ns
    eval_json(tmp_path, "--model", str(tmp_path / "hf"), "--tasks", spec, "--limit", "2")  # an HF folder: no record
    assert (src.run_dir / "evals").stat().st_mtime_ns == before
