"""banyan.logger: one JSONL schema for LM and RL rows, TensorBoard tags kind/name, W&B offline, tolerant reads."""

import json
import sys
import types

import numpy as np
import pytest
import torch

from banyan.config import LogConfig
from banyan.errors import DataError
from banyan.logger import MetricsLogger, read_metrics, trim_metrics


def test_lm_and_rl_rows_share_one_schema(tmp_path):
    with MetricsLogger(tmp_path / "lm", LogConfig(tensorboard=False), run_config=None) as lm:
        lm.log({"step": 10, "tokens": 640, "loss": 2.5, "lr": 1e-3, "mfu": float("nan"), "skipped": False})
        lm.log({"step": 10, "kind": "eval", "val_loss": 2.75, "val_bpb": float("inf")})
    with MetricsLogger(tmp_path / "rl", LogConfig(tensorboard=False)) as rl:  # RL builds the same class
        rl.log({"step": 256, "kind": "train", "episode_return": np.float64(21.5), "loss": torch.tensor(0.25),
                "episodes": np.int64(12)})
    lm_rows, rl_rows = read_metrics(tmp_path / "lm" / "metrics.jsonl"), read_metrics(tmp_path / "rl" / "metrics.jsonl")
    for row in lm_rows + rl_rows:
        assert list(row)[:3] == ["step", "time", "kind"] and row["time"] > 1.6e9
    assert lm_rows[0]["kind"] == "train" and lm_rows[0]["mfu"] is None and lm_rows[0]["skipped"] is False
    assert lm_rows[1] == {**lm_rows[1], "kind": "eval", "val_loss": 2.75, "val_bpb": None}
    assert rl_rows[0]["episode_return"] == 21.5 and rl_rows[0]["loss"] == 0.25 and rl_rows[0]["episodes"] == 12
    raw = (tmp_path / "lm" / "metrics.jsonl").read_text()
    assert "NaN" not in raw and "Infinity" not in raw  # strict JSON, readable by any tool


def test_bad_rows_name_the_field(tmp_path):
    log = MetricsLogger(tmp_path, LogConfig(tensorboard=False))
    with pytest.raises(DataError, match="no 'step'"):
        log.log({"loss": 1.0})
    with pytest.raises(DataError, match="'weights' must be a scalar.*list"):
        log.log({"step": 1, "weights": [1, 2]})
    with pytest.raises(DataError, match="'step' must be an integer"):
        log.log({"step": 1.5})
    log.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_tensorboard_tags_are_kind_slash_name(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLogger(tmp_path, LogConfig(tensorboard=True))
    log.log({"step": 1, "loss": 3.0, "lr": 0.1, "grad_norm": float("nan")})
    log.log({"step": 2, "kind": "eval", "return_mean": 9.0})
    log.text("sample", "to be or not", 2)
    log.close()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["eval/return_mean", "train/loss", "train/lr"]  # NaN not sent
    assert [(e.step, e.value) for e in acc.Scalars("eval/return_mean")] == [(2, 9.0)]


def test_read_tolerates_truncated_last_line_only(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "kind": "eval", "val_loss": 1.9}\n{"step": 3, "lo')
    rows = read_metrics(p)
    assert [(r["step"], r["kind"]) for r in rows] == [(1, "train"), (2, "eval")]  # old rows: kind defaults
    p.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not a JSON row"):
        read_metrics(p)


def test_resume_appends_after_dropping_partial_row_and_trim(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')  # killed mid-row
    with MetricsLogger(tmp_path, LogConfig(tensorboard=False), resume=True) as log:
        log.log({"step": 3, "loss": 1.25})
    assert [r["step"] for r in read_metrics(p)] == [1, 2, 3]
    trim_metrics(p, upto_step=2)
    assert [r["step"] for r in read_metrics(p)] == [1, 2]
    assert sorted(q.name for q in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_disabled_logger_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path / "rank1", LogConfig(), enabled=False)
    assert log.log({"step": 1, "loss": 1.0}) is None
    log.text("sample", "x", 1)
    log.close()
    assert not (tmp_path / "rank1").exists()


class FakeWandb(types.ModuleType):
    """Records wandb.init/log/finish calls (no service process, no network)."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kw):
        self.inits.append(kw)
        return self

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished += 1


@pytest.mark.parametrize("key, mode", [(None, "offline"), ("secret-key-123", "online")])
def test_wandb_offline_unless_key_and_key_never_logged(tmp_path, monkeypatch, key, mode):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    if key:
        monkeypatch.setenv("WANDB_API_KEY", key)
    cfg = LogConfig(tensorboard=False, wandb=True, wandb_project="p")
    with MetricsLogger(tmp_path / "run", cfg, run_config=cfg) as log:
        log.log({"step": 5, "kind": "eval", "val_loss": 1.5, "note": "text is not a scalar for W&B"})
    (init,) = fake.inits
    assert init["mode"] == mode and init["project"] == "p" and init["name"] == "run"
    assert init["config"]["wandb_project"] == "p"  # the dataclass went over as a dict
    assert fake.logged == [(5, {"eval/val_loss": 1.5})] and fake.finished == 1
    assert "secret-key" not in json.dumps(init, default=str) + (tmp_path / "run" / "metrics.jsonl").read_text()
