"""Gradient caching: a loss that couples the samples of a batch (CLIP's contrastive loss, SigLIP)
computed over all ``grad_accum`` micro-batches at once, in the memory of one micro-batch.

Accumulating such a loss micro-batch by micro-batch would shrink its batch: each micro-batch would
see only its own negatives. Instead (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch
Size under Memory Limited Setup"; open_clip's ``accum_freq`` does the same with a feature cache):

1. every micro-batch's embeddings (the tensors the coupled loss reads) without autograd;
2. the coupled loss over all of them as leaves, and its gradient with respect to each leaf;
3. per micro-batch, the embeddings again with autograd, and a backward of ``sum(e * dL/de)`` plus
   the micro-batch's own per-sample losses, which gives the parameters exactly the big batch's
   gradient (the forward must repeat itself: no dropout between passes).

A task opts in with :attr:`Task.couples_samples` and :meth:`Task.coupled_loss`, and its forward
answers ``mode="embed"`` and takes ``embed_grads`` (see :class:`corefm.tasks.base.Task`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

Batch = dict[str, Any]
Outputs = dict[str, torch.Tensor]


def cached_micro_steps(forward: Callable[..., Outputs], coupled_loss: Callable[[list[Outputs]], Outputs],
                       batches: list[Batch], backward: Callable[[torch.Tensor], None],
                       after_backward: Callable[[int, Outputs], None] = lambda micro, log: None) -> list[Outputs]:
    """Run steps 1-3 over ``batches`` (the K micro-batches of one optimizer step).

    ``forward(batch, mode=..., embed_grads=...)``: the (engine-wrapped) task. ``backward(loss)`` is the
    engine's, which divides by K as for any accumulated loss; the cached gradients are scaled by K to
    undo that. ``after_backward(micro, log)`` runs after each micro-batch's backward (the trainer logs
    and steps the engine there).

    The logs, per micro-batch (also returned): ``loss`` is the coupled loss plus that micro-batch's
    per-sample loss terms, so the mean over the K micro-batches is the big batch's loss.
    """
    k = len(batches)
    with torch.no_grad():
        embeds = [forward(batch, mode="embed") for batch in batches]
    leaves = [{name: t.detach().requires_grad_(True) for name, t in e.items()} for e in embeds]
    coupled = coupled_loss(leaves)
    coupled["loss"].backward()  # collectives inside (features gathered over ranks) run on every rank
    coupled_logs = {name: t.detach() for name, t in coupled.items()}
    logs = []
    for micro, (batch, leaf) in enumerate(zip(batches, leaves)):
        grads = {name: t.grad * k if t.grad is not None else torch.zeros_like(t) for name, t in leaf.items()}
        out = forward(batch, mode="train", embed_grads=grads)
        backward(out["loss"])
        own = out.get("sample_loss", out["loss"].new_zeros(()))
        log = {**{n: t for n, t in out.items() if n not in ("loss", "sample_loss")}, **coupled_logs,
               "loss": coupled_logs["loss"] + own.detach()}
        after_backward(micro, log)
        logs.append(log)
    return logs


def surrogate(embeds: Outputs, grads: Outputs) -> torch.Tensor:
    """``sum over tensors of (e * g).sum()``: its gradient through ``e`` is ``g``, so its backward hands
    the cached loss gradients on into the network. ``embeds`` and ``grads`` share their keys."""
    total = None
    for name, grad in grads.items():
        term = (embeds[name].float() * grad.float()).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no embedding gradients to hand on")
    return total
