"""The learning-rate schedule, value by value: linear warmup, then cosine, multistep or constant."""
from __future__ import annotations

import math

import pytest
import torch

from hiir.platform.config import load_config
from hiir.platform.train.schedule import lr_factor


def _optim(**fields):
    return load_config({"optim": fields}).optim


def test_cosine_after_warmup():
    optim = _optim(warmup_steps=10, max_steps=110, schedule="cosine", min_lr_ratio=0.01)
    assert lr_factor(0, optim) == pytest.approx(0.1)      # warmup starts at lr / warmup_steps, not at 0
    assert lr_factor(4, optim) == pytest.approx(0.5)
    assert lr_factor(9, optim) == pytest.approx(1.0)      # warmup's last step reaches the peak
    assert lr_factor(10, optim) == pytest.approx(1.0)     # the cosine starts at the peak
    assert lr_factor(60, optim) == pytest.approx(0.01 + 0.99 * 0.5)  # half-way down
    assert lr_factor(85, optim) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_factor(110, optim) == pytest.approx(0.01)   # the floor at the end
    assert lr_factor(500, optim) == pytest.approx(0.01)   # and past it (a resumed, extended run)


def test_multistep_milestones_are_fractions_of_max_steps():
    optim = _optim(warmup_steps=0, max_steps=100, schedule="multistep", milestones=[0.5, 0.8], gamma=0.5)
    assert [lr_factor(s, optim) for s in (0, 49, 50, 79, 80, 99)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_constant_with_warmup_and_no_warmup():
    optim = _optim(warmup_steps=4, max_steps=50, schedule="constant")
    assert [lr_factor(s, optim) for s in (0, 1, 3, 4, 49)] == pytest.approx([0.25, 0.5, 1.0, 1.0, 1.0])
    assert lr_factor(0, _optim(warmup_steps=0, schedule="constant")) == 1.0


def test_torch_lambdalr_applies_the_factor_from_the_first_step():
    optim = _optim(lr=2e-3, warmup_steps=4, max_steps=20, schedule="cosine")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=optim.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, optim))
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2e-3 * f for f in (0.25, 0.5, 0.75, 1.0, 1.0, lr_factor(5, optim))])
