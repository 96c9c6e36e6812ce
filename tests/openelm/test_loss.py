"""The one-pass cross-entropy + z-loss and the ``openelm_lm`` task against the plain computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corefm.tasks.causal_lm import CausalLMConfig, CausalLMTask
from projects.openelm.config import tiny
from projects.openelm.loss import cross_entropy_z, eval_sums
from projects.openelm.model import OpenELM
from projects.openelm.task import OpenELMLMTask


def reference(logits, targets, z_weight):
    x = logits.float().flatten(0, -2)
    t = targets.flatten()
    valid = t >= 0
    nll = (F.cross_entropy(x, t.clamp(min=0), reduction="none") * valid).sum()
    z = (torch.logsumexp(x, -1).square() * valid).sum()
    return (nll + z_weight * z) / valid.sum(), nll, z


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [7, 3000])  # one block, and several blocks of rows
def test_values_and_gradients_match_the_plain_loss(dtype, vocab):
    logits = (torch.randn(3, 41, vocab) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, vocab, (3, 41))
    targets[0, :9] = -1
    targets[2, -4:] = -1
    loss, nll, z, count = cross_entropy_z(logits, targets, 1e-2)
    (0.37 * loss).backward()  # an incoming gradient other than 1, as with gradient accumulation
    ours = logits.grad.clone()
    logits.grad = None
    ref_loss, ref_nll, ref_z = reference(logits, targets, 1e-2)
    (0.37 * ref_loss).backward()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((nll, z), (ref_nll, ref_z), rtol=1e-5, atol=1e-3)
    assert int(count) == int((targets >= 0).sum()) and ours.dtype == dtype
    torch.testing.assert_close(ours.float(), logits.grad.float(), **tol)
    assert (ours[0, :8] == 0).all()  # rows whose target is padding get no gradient
    sums = eval_sums(logits.detach(), targets)
    torch.testing.assert_close(sums[0].float(), ref_nll, rtol=1e-5, atol=1e-3)
    valid = targets >= 0
    assert int(sums[2]) == int(((logits.float().argmax(-1) == targets) & valid).sum())


def test_openelm_lm_task_equals_causal_lm():
    model = OpenELM(tiny())
    tokens = torch.randint(0, 512, (3, 20))
    tokens[1, -5:] = -1
    cfg = CausalLMConfig(z_loss=1e-3)
    outs, grads = [], []
    for task in (CausalLMTask(cfg, model), OpenELMLMTask(cfg, model)):
        model.zero_grad()
        out = task({"tokens": tokens})
        out["loss"].backward()
        outs.append(out)
        grads.append([p.grad.clone() for p in model.parameters()])
        with torch.no_grad():
            outs.append(task({"tokens": tokens}, mode="eval"))
    for key in ("loss", "ce", "num_tokens"):
        torch.testing.assert_close(outs[2][key], outs[0][key], rtol=1e-5, atol=1e-6)
    for key in ("nll_sum", "tokens", "correct"):
        torch.testing.assert_close(outs[3][key].double(), outs[1][key].double(), rtol=1e-5, atol=1e-4)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
