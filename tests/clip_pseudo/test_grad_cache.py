"""Gradient caching: K micro-batches give the CLIP/SigLIP loss and gradients of one big batch."""

from __future__ import annotations

import copy

import pytest
import torch

from corefm.train.grad_cache import cached_micro_steps
from projects.clip_pseudo.config import named_config
from projects.clip_pseudo.heads import HeadSpec
from projects.clip_pseudo.model import ClipModel
from projects.clip_pseudo.task import ClipTask, ClipTaskConfig


def _task(loss: str, heads: tuple = ()) -> ClipTask:
    torch.manual_seed(0)
    extra = {"init_logit_bias": -10.0, "init_logit_scale": 2.302585} if loss == "siglip" else {}
    cfg = ClipTaskConfig(loss=loss, heads=list(heads), templates="simple")
    return ClipTask(cfg, ClipModel(named_config("micro", **extra)), [])


def _batch(n: int, heads: tuple = ()) -> dict:
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(n, 3, 32, 32, generator=g), "text": torch.randint(1, 400, (n, 16), generator=g)}
    batch["text"][:, -1] = 49407  # the end-of-text token
    for spec in heads:
        batch[f"label_{spec.name}"] = torch.randint(0, spec.channels, (n, 32, 32), generator=g)
        batch[f"mask_{spec.name}"] = torch.ones(n)
    return batch


def _grads(task: ClipTask) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss, heads", [("clip", ()), ("siglip", ()),
                                         ("clip", (HeadSpec(name="seg", kind="segmentation", key="seg.png",
                                                            channels=3, weight=0.5),))])
@pytest.mark.parametrize("k", [2, 4])
def test_k_micro_batches_give_the_big_batch_loss_and_gradients(loss, heads, k):
    big = _task(loss, heads)
    cached = copy.deepcopy(big)
    batch = _batch(16, heads)
    out = big(batch)
    out["loss"].backward()
    micro = [{key: v[i::k] for key, v in batch.items()} for i in range(k)]
    assert cached.couples_samples
    logs = cached_micro_steps(cached, cached.coupled_loss, micro, lambda l: (l / k).backward())  # as DeepSpeed scales
    mean_loss = sum(log["loss"] for log in logs) / k
    torch.testing.assert_close(mean_loss, out["loss"].detach(), atol=1e-6, rtol=1e-5)
    ref, got = _grads(big), _grads(cached)
    assert set(ref) == set(got) and len(ref) > 10
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-6, rtol=1e-4, msg=name)


def test_per_micro_batch_accumulation_would_shrink_the_batch():
    # What gradient caching prevents: the mean of per-micro-batch losses is not the big batch's loss.
    task = _task("clip")
    batch = _batch(16)
    with torch.no_grad():
        full = task(batch)["loss"]
        halves = sum(task({key: v[i::2] for key, v in batch.items()})["loss"] for i in range(2)) / 2
    assert abs(float(full) - float(halves)) > 1e-3
