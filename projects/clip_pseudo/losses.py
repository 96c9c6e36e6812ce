"""Losses: open_clip's contrastive losses across ranks, and masked per-sample task losses."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from projects.clip_pseudo.heads import HeadSpec


def build_contrastive_loss(kind: str, local_loss: bool, gather_with_grad: bool) -> nn.Module:
    """open_clip's ClipLoss (or SigLipLoss) for this process's rank in the current process group.

    With more than one rank ClipLoss gathers features over torch.distributed (DeepSpeed's group):
    gather_with_grad keeps the other ranks' features in the graph, local_loss computes only this
    rank's rows of the global logit matrix (linear instead of quadratic memory in the world size).
    """
    from open_clip.loss import ClipLoss, SigLipLoss

    # open_clip gathers with torch.distributed.nn.all_gather, which torch marks as deprecated;
    # the warning would repeat on every rank at every step.
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    if kind == "siglip":
        return SigLipLoss(rank=rank, world_size=world)
    return ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True,
                    rank=rank, world_size=world)


def per_sample_loss(spec: HeadSpec, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred (B, C, S, S), target (B, S, S) long or (B, C, S, S) float -> loss per sample (B,).

    Segmentation averages over the pixels not equal to ignore_index, regression with ignore_zero
    over the pixels whose label is not 0 (a sample with no such pixel gives 0).
    """
    pred = pred.float()
    if spec.loss == "ce":
        pix = F.cross_entropy(pred, target, ignore_index=spec.ignore_index, reduction="none")  # (B, S, S)
        valid = (target != spec.ignore_index).float()
        return (pix * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1.0)
    if spec.loss == "bce":
        return F.binary_cross_entropy_with_logits(pred, target, reduction="none").flatten(1).mean(1)
    if spec.loss in ("l1", "mse"):
        err = (pred - target).abs() if spec.loss == "l1" else (pred - target).pow(2)
        if not spec.ignore_zero:
            return err.flatten(1).mean(1)
        valid = (target != 0).float()
        return (err * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1.0)
    if spec.loss == "cosine":  # surface normals: 1 - cos between predicted and expert vectors, per pixel
        return (1 - F.cosine_similarity(pred, target, dim=1)).flatten(1).mean(1)
    raise ValueError(f"unknown loss {spec.loss!r}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values (B,), mask (B,) of 0/1 -> mean over the masked-in samples; 0 (still in the graph) if none.

    Keeping the empty case in the graph (0 * loss) gives every rank the same parameters with
    gradients, which ZeRO's bucketed reductions expect.
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)
