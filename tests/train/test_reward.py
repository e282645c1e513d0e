"""`banyan reward`: the RewardModel head and names, the pairwise loss, learning, save/load, bad input."""

import math

import pytest
import torch

from banyan.config import ModelConfig
from banyan.errors import BanyanError
from banyan.model import build_model
from banyan.model.reward import RewardModel
from banyan.train import reward
from banyan.train.metrics import read_metrics
from banyan.train.reward import RewardConfig, last_response_index, load_reward_model
from banyan.train.task import IGNORE

from prefkit import easy_pairs, make_init_run, stage_run, write_jsonl


@pytest.mark.parametrize("tie", [False, True])
def test_reward_model_names_and_head(tie):
    torch.manual_seed(0)
    lm = build_model(ModelConfig(vocab_size=40, n_layer=1, n_head=2, d_model=16, max_seq_len=16,
                                 tie_embeddings=tie).finalize(), device="cpu")
    rm = RewardModel(lm)
    names = set(rm.state_dict())
    assert names == (set(lm.state_dict()) - {"lm_head.weight"}) | {"score.weight"}
    rm.init_weights()
    x = torch.randint(0, 40, (3, 7))
    assert rm(x).shape == (3, 7) and rm(x).abs().max() == 0  # zero head: every reward is 0
    with torch.no_grad():
        rm.score.weight.copy_(torch.randn(1, 16))
    hidden = lm.hidden_states(x)  # the head reads the LM's final hidden states
    assert torch.allclose(rm(x), (hidden @ rm.score.weight.T).squeeze(-1), atol=1e-6)
    assert rm.num_params() == lm.num_params() and len(rm.blocks()) == 1


def test_last_response_index():
    labels = torch.tensor([[IGNORE, 5, 6, IGNORE], [IGNORE, IGNORE, IGNORE, 7]])
    assert last_response_index(labels).tolist() == [2, 3]


@pytest.fixture(scope="module")
def sft(tiny_data, tmp_path_factory):
    return make_init_run(tiny_data, tmp_path_factory.mktemp("sft") / "run")


def test_reward_model_learns_easy_preferences_and_reloads(sft, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", easy_pairs(20))
    out = tmp_path / "rm"
    summary = reward.train(stage_run(RewardConfig, "reward", sft, data, out, val_fraction=0.2, lr=1e-2))
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # zero head at step 0
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.1
    assert summary["val_reward_accuracy"] == 1.0 and summary["val_margin"] > 0  # held-out pairs, never trained on
    # saved and loaded like any run: the reloaded model reproduces the held-out margin
    from banyan.train.dpo import chat_source
    from banyan.train.pairs import PairData, split_pairs
    from banyan.data.prefs import load_pairs

    model = load_reward_model(out)
    cfg = stage_run(RewardConfig, "reward", sft, data, tmp_path / "unused")
    _, tok, template = chat_source(cfg)
    val = PairData(split_pairs(load_pairs(str(data)), 0.2)[1], tok, template, 48, tok.pad_id)
    with torch.no_grad():
        rc, rr = reward.sequence_rewards(model, val.collate(list(range(len(val))))).chunk(2)
    assert (rc > rr).all()
    assert (rc - rr).mean().item() == pytest.approx(summary["val_margin"], rel=1e-4)


def test_bad_input(sft, tmp_path):
    with pytest.raises(BanyanError, match="--reward.data"):
        reward.train(stage_run(RewardConfig, "reward", sft, "", tmp_path / "o"))
    bad = write_jsonl(tmp_path / "bad.jsonl", easy_pairs(2) + [{"prompt": "p", "chosen": "a", "rejected": ""}])
    with pytest.raises(BanyanError, match=r"bad\.jsonl:3: field 'rejected' is empty"):
        reward.train(stage_run(RewardConfig, "reward", sft, bad, tmp_path / "o2"))
