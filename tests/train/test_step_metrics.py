"""Device-side step bookkeeping: a non-finite step is skipped by the optimizer itself; metric means."""

from __future__ import annotations

import math

import torch
from torch import nn

from corefm.train.comm import Comm
from corefm.train.step_metrics import MetricWindow, NonFiniteGuard

CPU = torch.device("cpu")


def _step(model, opt, guard, x, step, scale=1.0):
    loss = model(x).square().mean() * scale
    guard.note(loss)
    loss.backward()
    guard.arm(step)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _snapshot(model, opt):
    state = {k: v.clone() for p in model.parameters() for k, v in opt.state[p].items()} if opt.state else {}
    return [p.detach().clone() for p in model.parameters()], state


def test_a_nonfinite_step_leaves_weights_and_adam_moments_untouched():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    guard = NonFiniteGuard(opt, CPU, Comm(CPU))
    x = torch.randn(4, 3)
    _step(model, opt, guard, x, 1)
    weights, moments = _snapshot(model, opt)
    _step(model, opt, guard, x, 2, scale=float("nan"))
    _step(model, opt, guard, x, 3, scale=float("inf"))
    after, after_moments = _snapshot(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(weights, after))
    assert moments.keys() == after_moments.keys() and all(torch.equal(moments[k], after_moments[k]) for k in moments)
    assert guard.read() == {"steps": 2, "first_step": 2, "first_ranks": 1, "worst_run": 2}
    _step(model, opt, guard, x, 4)  # finite again: the optimizer moves
    assert not torch.equal(model.weight, weights[0])
    assert guard.read() == {"steps": 0, "first_step": -1, "first_ranks": 0, "worst_run": 0}


def test_metric_window_means_cover_finite_micro_batches_only():
    window = MetricWindow(CPU)
    for loss, acc in ((1.0, 0.5), (float("nan"), 0.9), (3.0, 0.7)):
        window.add({"loss": torch.tensor(loss), "acc": torch.tensor(acc), "num_tokens": torch.tensor(10.0),
                    "per_row": torch.ones(4)})  # not a scalar: not logged
    out = window.reduce(Comm(CPU))
    assert list(out)[0] == "loss" and out["loss"] == 2.0 and math.isclose(out["acc"], 0.6, rel_tol=1e-6)
    assert out["last_loss"] == 3.0 and out["tokens"] == 20.0 and "per_row" not in out
