"""LR schedules at chosen steps (closed form)."""

import math

import pytest
import torch

from banyan.config import OptimConfig
from banyan.train.schedule import lr_factor, set_lr


def test_warmup_is_linear():
    cfg = OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(4, 100, cfg) == pytest.approx(0.5)
    assert lr_factor(9, 100, cfg) == pytest.approx(1.0)


def test_cosine_values():
    cfg = OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(10, 110, cfg) == pytest.approx(1.0)
    assert lr_factor(60, 110, cfg) == pytest.approx(0.1 + 0.9 * 0.5)           # halfway: cos(pi/2)=0
    assert lr_factor(35, 110, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(110, 110, cfg) == pytest.approx(0.1)
    assert lr_factor(500, 110, cfg) == pytest.approx(0.1)                        # past the end: stays at min


def test_wsd_values():
    cfg = OptimConfig(warmup_steps=0, schedule="wsd", decay_frac=0.2, min_lr_ratio=0.0)
    assert lr_factor(0, 100, cfg) == 1.0
    assert lr_factor(79, 100, cfg) == 1.0
    assert lr_factor(90, 100, cfg) == pytest.approx(0.5)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.0)


def test_constant_and_set_lr_keeps_group_ratios():
    cfg = OptimConfig(warmup_steps=0, schedule="constant")
    assert lr_factor(50, 100, cfg) == 1.0
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 0.1}])
    set_lr(opt, 0.5)
    set_lr(opt, 0.5)  # idempotent: scales the base lr, not the current one
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])
