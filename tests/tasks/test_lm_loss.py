"""The one-pass cross-entropy + z-loss and the ``causal_lm`` task against the plain computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corefm.tasks.causal_lm import CausalLMConfig, CausalLMTask
from projects.openelm.config import tiny
from corefm.tasks.lm_loss import cross_entropy_z, eval_sums
from projects.openelm.model import OpenELM


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


def test_causal_lm_task_equals_the_plain_loss():
    """Loss, logged ce, eval sums and parameter gradients of the task equal F.cross_entropy's."""
    model = OpenELM(tiny())
    tokens = torch.randint(0, 512, (3, 20))
    tokens[1, -5:] = -1
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    task = CausalLMTask(CausalLMConfig(z_loss=1e-3), model)
    out = task({"tokens": tokens})
    out["loss"].backward()
    ours = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        sums = task({"tokens": tokens}, mode="eval")
    model.zero_grad()
    logits = model(inputs.clamp(min=0))
    ref_loss, ref_nll, _ = reference(logits, targets, 1e-3)
    ref_loss.backward()
    n = (targets >= 0).sum()
    torch.testing.assert_close(out["loss"], ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["ce"], ref_nll / n, rtol=1e-5, atol=1e-6)
    assert int(out["num_tokens"]) == int(sums["tokens"]) == int(n) == 3 * 19 - 5
    torch.testing.assert_close(sums["nll_sum"].double(), ref_nll.detach().double(), rtol=1e-5, atol=1e-4)
    correct = ((logits.argmax(-1) == targets) & (targets >= 0)).sum()
    assert int(sums["correct"]) == int(correct)
    for a, p in zip(ours, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("capped", [False, True])
def test_overwriting_the_logits_keeps_gradients_exact(capped):
    """With overwrite_logits the gradient reuses the logits' memory only when they come straight out
    of a matmul; soft-capped logits (tanh's backward reads its output) must not be overwritten."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 7, 16, generator=gen, requires_grad=True)
    w = torch.randn(300, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 300, (2, 7), generator=gen)
    grads = []
    for overwrite in (False, True):
        logits = F.linear(h, w)
        logits = 5 * torch.tanh(logits / 5) if capped else logits
        cross_entropy_z(logits, targets, 1e-3, overwrite_logits=overwrite)[0].backward()
        grads.append((h.grad.clone(), w.grad.clone()))
        h.grad = w.grad = None
        if overwrite and not capped:
            assert not torch.equal(logits.detach(), F.linear(h, w).detach())  # the memory was reused
    ref_loss = reference(F.linear(h, w) if not capped else 5 * torch.tanh(F.linear(h, w) / 5), targets, 1e-3)[0]
    ref_loss.backward()
    for got in grads:
        torch.testing.assert_close(got[0], h.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[1], w.grad, rtol=1e-5, atol=1e-6)
