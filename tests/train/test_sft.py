"""`banyan sft`: the trained mask through the Task's batches, padding masked by position, packing
equivalence (model and task level), exact resume, --sft.show, bad input, a whole run's outputs."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from banyan.config import load_config
from banyan.data.packing import IGNORE, Example, collate_packed
from banyan.model import build_model
from banyan.model.config import ModelConfig
from banyan.train.sft import SFTConfig, SFTTask, train
from banyan.train.trainer import Trainer

# the char tokenizer of the tiny corpus only knows these letters (tests/train/conftest.py)
CONVS = [
    {"messages": [{"role": "system", "content": "you are all"}, {"role": "user", "content": "hear me speak"},
                  {"role": "assistant", "content": "speak"}, {"role": "user", "content": "proceed"},
                  {"role": "assistant", "content": "we are resolved"}]},
    {"messages": [{"role": "user", "content": "die"}, {"role": "assistant", "content": "famish"}]},
    {"messages": [{"role": "user", "content": "before we proceed any further"},
                  {"role": "assistant", "content": "hear me"}]},
    {"messages": [{"role": "user", "content": "all"}, {"role": "assistant", "content": "rather to die than to famish"}]},
] * 6


@pytest.fixture(scope="module")
def source_run(tiny_data, tmp_path_factory):
    """A 4-step pretrained tiny Llama (checkpoint with tokenizer.json + tokenizer_config.json)."""
    from banyan.train.pretrain import train as pretrain
    from trainkit import tiny_run

    out = tmp_path_factory.mktemp("src") / "run"
    pretrain(tiny_run(tiny_data, out, max_steps=4))
    return out


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    path = tmp_path_factory.mktemp("chats") / "chats.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CONVS))
    return path


def sft_cfg(source, data, out, **sft):
    return load_config(SFTConfig, overrides={
        "init": str(source), "out": str(out),
        "sft": {"data": str(data), "val_fraction": 0.2, "end_prompts": 1, "end_tokens": 8, **sft},
        "train": {"max_steps": 4, "seq_len": 64, "micro_batch": 2, "global_batch_tokens": 256, "eval_every": 2,
                  "eval_batches": 2, "log_every": 1, "device": "cpu", "sample_every": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 1}, "checkpoint": {"every": 2, "keep_last": 3},
        "log": {"tensorboard": False, "wandb": False, "plots": False, "progress": False}})


def setup_task(cfg):
    from banyan.parallel.env import DistEnv
    from banyan.train.init_from import apply_init_model

    apply_init_model(cfg)
    task = SFTTask(cfg)
    task.setup(cfg, DistEnv.from_env("cpu"))
    return task


def expected_targets(conv) -> str:
    """What must be trained in a conversation: each assistant content followed by <|end|>."""
    return "".join(m["content"] + "<|end|>" for m in conv["messages"] if m["role"] == "assistant")


@pytest.mark.parametrize("packing", [True, False])
def test_mask_covers_exactly_assistant_content_and_end(source_run, chats, tmp_path, packing):
    task = setup_task(sft_cfg(source_run, chats, tmp_path / "o", packing=packing))
    tok = task.tokenizer
    want = {expected_targets(c) for c in CONVS}
    for step in range(3):
        b = task.batch(step, 0)
        for row in range(b["labels"].size(0)):
            labels = b["labels"][row]
            # padded rows: the conversation is segment 0, its right padding segment 1
            docs = b["doc_ids"][row] if packing else (b["input_ids"][row] == tok.pad_id).long()
            for d in docs.unique():
                sel = (docs == d) & (labels != IGNORE)
                if sel.any():  # a conversation's trained labels decode to its assistant turns + <|end|>
                    assert tok.decode(labels[sel].tolist()) in want
            # labels are next-token ids wherever trained, inside one conversation
            x = b["input_ids"][row]
            inside = (labels[:-1] != IGNORE) & (docs[:-1] == docs[1:])
            assert torch.equal(labels[:-1][inside], x[1:][inside])


def test_long_conversations_truncated_from_the_end_or_dropped(source_run, chats, tmp_path):
    cfg = sft_cfg(source_run, chats, tmp_path / "o")
    cfg.train.seq_len, cfg.train.global_batch_tokens = 16, 0
    task = setup_task(cfg)
    n_val = {c["messages"][-2]["content"]: 0 for c in CONVS[:4]}
    for conv in task.val_convs:
        n_val[[t.content for t in conv if t.role == "user"][-1]] += 1
    train = {k: 6 - v for k, v in n_val.items()}  # each of the 4 conversations appears 6 times
    # 17 ids kept: conv 3 is cut but keeps trained tokens; conv 0 and 2 lose every answer token
    assert task.dropped == train["proceed"] + train["before we proceed any further"]
    assert task.truncated == train["proceed"] + train["all"] + train["before we proceed any further"]
    assert len(task.examples) == sum(train.values()) - task.dropped
    assert all(len(e) <= 16 for e in task.examples)


def test_padding_masked_by_position_and_end_token_trained(source_run, chats, tmp_path):
    task = setup_task(sft_cfg(source_run, chats, tmp_path / "o", packing=False))
    pad, end = task.tokenizer.pad_id, task.end_id
    assert pad != end
    b = task.batch(0, 0)
    lengths = [len(task.examples[w[0]]) for w in task.stream.rows(0, 2)]
    for row, n in enumerate(lengths):
        assert (b["labels"][row, n:] == IGNORE).all() and (b["input_ids"][row, n:] == pad).all()
        assert b["labels"][row, n - 1] == end  # the conversation ends in <|end|>, and that label is trained


def _per_doc_loss(model, batch):
    logits = model(batch["input_ids"], position_ids=batch.get("position_ids"), doc_ids=batch.get("doc_ids"))
    ce = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE, reduction="none")
    return ce.view(batch["labels"].shape)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_batch_gives_each_conversation_its_own_loss(arch):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, n_layer=2, n_head=4, n_kv_head=2 if arch == "llama" else 0, d_model=32,
                      vocab_size=50, max_seq_len=64).finalize()
    model = build_model(cfg, device="cpu").eval()
    g = torch.Generator().manual_seed(1)
    exs = []
    for n in (7, 13, 5, 19):
        ids = torch.randint(0, 50, (n,), generator=g).tolist()
        labels = [y if k % 3 else IGNORE for k, y in enumerate(torch.randint(0, 50, (n,), generator=g).tolist())]
        exs.append(Example(tuple(ids), tuple(labels)))
    packed = collate_packed([exs[:3], exs[3:]], 48, pad_id=0)  # [2, 48]  # second row: one example + padding
    with torch.no_grad():
        ce = _per_doc_loss(model, packed)
        for b, row in enumerate([exs[:3], exs[3:]]):
            for slot, ex in enumerate(row):
                alone = _per_doc_loss(model, {"input_ids": torch.tensor([ex.input_ids]),
                                              "labels": torch.tensor([ex.labels])}).sum()
                got = ce[b][packed["doc_ids"][b] == slot].sum()
                assert abs(float(got - alone)) <= 1e-5 * max(1.0, abs(float(alone)))
        # one document at positions 0..T-1 is exactly the plain path
        x = packed["input_ids"][:1]
        plain = model(x)
        same = model(x, position_ids=torch.arange(48)[None], doc_ids=torch.zeros(1, 48, dtype=torch.long))
        assert torch.allclose(plain, same, atol=1e-5)


def test_task_val_loss_is_the_same_packed_or_padded(source_run, chats, tmp_path):
    from banyan.eval.lm import evaluate_lm

    model = build_model(setup_task(sft_cfg(source_run, chats, tmp_path / "m")).cfg.model, device="cpu")
    got = {}
    for packing in (True, False):
        task = setup_task(sft_cfg(source_run, chats, tmp_path / f"p{packing}", packing=packing))
        task.cfg.train.eval_batches = 0  # every held-out conversation
        got[packing] = evaluate_lm(model, task.val_batches(), task.loss, task.token_bytes)
    assert got[True]["val_tokens"] == got[False]["val_tokens"] > 0
    assert abs(got[True]["val_loss"] - got[False]["val_loss"]) < 1e-5


def test_batches_are_a_pure_function_of_the_step(source_run, chats, tmp_path):
    a = setup_task(sft_cfg(source_run, chats, tmp_path / "a"))
    b = setup_task(sft_cfg(source_run, chats, tmp_path / "b"))
    for step, micro in [(5, 1), (0, 0), (40, 0), (5, 1)]:  # any order, past the first epoch
        x, y = a.batch(step, micro), b.batch(step, micro)
        assert all(torch.equal(x[k], y[k]) for k in x)


class StopsAt2(Trainer):
    def after_step(self, res, lr):
        return super().after_step(res, lr) and self.step < 2


def _losses(out):
    rows = [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r.get("loss"), r.get("val_loss")) for r in rows}


def test_resume_mid_sft_equals_an_uninterrupted_run(source_run, chats, tmp_path):
    train(sft_cfg(source_run, chats, tmp_path / "ref"))
    part = sft_cfg(source_run, chats, tmp_path / "part")
    StopsAt2(part, SFTTask(part), stage="sft").run()
    rest = sft_cfg(source_run, chats, tmp_path / "part")
    rest.resume = True
    summary = train(rest)
    assert _losses(tmp_path / "part") == _losses(tmp_path / "ref")
    ck = tmp_path / "part" / "checkpoints" / "step_000004"
    assert (ck / "tokenizer.json").is_file()
    assert "chat_template" in json.loads((ck / "tokenizer_config.json").read_text())
    assert 0 < summary["packing_efficiency"] <= 1 and 0 <= summary["val_end_rate"] <= 1
    assert summary["trained_tokens_per_s"] < summary["total_tokens_per_s"]


def test_show_prints_marked_examples_and_counts(source_run, chats, capsys):
    from banyan.cli import main

    assert main(["sft", "--init", str(source_run), "--sft.data", str(chats), "--sft.show", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("=== example") == 2
    assert "[[speak<|end|>]]" in out and "[[we are resolved<|end|>]]" in out
    assert "tokens, 22 trained" in out  # "speak<|end|>" 6 + "we are resolved<|end|>" 16


def test_bad_input_is_one_line_and_exit_2(source_run, chats, tmp_path, capsys):
    from banyan.cli import main

    assert main(["sft", "--init", str(tmp_path / "nope"), "--sft.data", str(chats), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nope" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(CONVS[0]) + "\n{not json\n")
    assert main(["sft", "--init", str(source_run), "--sft.data", str(bad), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bad.jsonl:2" in err
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_source_without_tokenizer_config_gets_the_default_template(source_run, chats, tmp_path):
    import shutil

    from banyan.data.chat_template import DEFAULT_CHAT_TEMPLATE
    from banyan.train import checkpoint as ckpt

    src = tmp_path / "ck"
    shutil.copytree(ckpt.latest_checkpoint(source_run), src)
    (src / "tokenizer_config.json").unlink()
    task = setup_task(sft_cfg(src, chats, tmp_path / "o"))
    written = json.loads((tmp_path / "o" / "tokenizer" / "tokenizer_config.json").read_text())
    assert task.template == written["chat_template"] == DEFAULT_CHAT_TEMPLATE
