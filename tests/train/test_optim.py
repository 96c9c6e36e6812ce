"""Optimizer groups: no decay on 1-d parameters, per-parameter lr multipliers kept by the schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from corefm.train.config import OptimConfig, ScheduleConfig
from corefm.train.optim import build_optimizer
from corefm.train.schedule import build_scheduler


class Net(nn.Module):
    def __init__(self, scales: dict[str, float] | None = None) -> None:
        super().__init__()
        self.backbone, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.scales = scales or {}

    def param_lr_scales(self) -> dict[str, float]:
        return self.scales


def _lr_of(opt: torch.optim.Optimizer) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


def test_default_groups_are_decay_and_no_decay_over_trainable_parameters():
    net = Net()
    opt = build_optimizer(net, OptimConfig(lr=1e-3, weight_decay=0.1))
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups] == [(1e-3, 0.1, 2), (1e-3, 0.0, 2)]
    assert all(id(p) not in _lr_of(opt) for p in net.frozen.parameters())


def test_lr_multipliers_give_their_own_groups_and_survive_the_schedule():
    net = Net({"backbone.weight": 0.1, "backbone.bias": 0.1})
    opt = build_optimizer(net, OptimConfig(lr=1e-3, weight_decay=0.1))
    lr = _lr_of(opt)
    assert lr[id(net.backbone.weight)] == pytest.approx((1e-4, 0.1))
    assert lr[id(net.backbone.bias)] == pytest.approx((1e-4, 0.0))
    assert lr[id(net.head.weight)] == pytest.approx((1e-3, 0.1))
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", warmup_steps=2), max_steps=10)
    for _ in range(5):
        opt.step()
        sched.step()
    lr = _lr_of(opt)
    assert lr[id(net.backbone.weight)][0] == pytest.approx(0.1 * lr[id(net.head.weight)][0])


def test_a_multiplier_for_a_missing_parameter_is_an_error():
    with pytest.raises(ValueError, match="backbone.weigth"):
        build_optimizer(Net({"backbone.weigth": 0.1}), OptimConfig())
