"""Dense probes on frozen features: a linear head on the image tower's patch tokens.

The probe is LayerNorm + one Linear per patch token, upsampled bilinearly to the label size (the
usual linear dense probe; with ``up`` > 1 each token linearly predicts an up x up block of pixels,
still linear in the frozen features but able to show sub-patch detail), trained with AdamW on cached frozen tokens and scored on held-out
images: mIoU for class maps, IoU/F1 for 0/1 maps, RMSE/MAE and delta1 (share of pixels with
max(pred/gt, gt/pred) < 1.25) for regression such as depth.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from projects.clip_pseudo.heads import DenseHead, HeadSpec
from projects.clip_pseudo.losses import masked_mean, per_sample_loss
from projects.clip_pseudo.task import head_metrics, head_sums

# Ready-made probes for shards written by the data tools (``corefm clip eval --probe seg,semantic``).
PRESETS = {
    "seg": HeadSpec("seg", "segmentation", "seg.png", channels=2),
    # foreground pixels labelled with the image's class (1 + cls), background 0: localised semantics
    "semantic": HeadSpec("semantic", "segmentation", "seg.png", channels=11),
    "edges": HeadSpec("edges", "binary", "edges.png"),
    "depth": HeadSpec("depth", "regression", "depth.png", ignore_zero=True),
    "normals": HeadSpec("normals", "regression", "normal.png", channels=3, loss="cosine"),
}


def semantic_target(seg: torch.Tensor, cls: torch.Tensor, ignore: int = 255) -> torch.Tensor:
    """seg (B, S, S) 0/1 foreground, cls (B,) -> (B, S, S): 0 background, 1 + cls on the foreground."""
    out = torch.where(seg > 0, cls[:, None, None] + 1, torch.zeros_like(seg))
    return torch.where(seg == ignore, seg, out)


def delta1_sums(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> tuple[float, float]:
    """(pixels within 1.25x, pixels counted) over pixels with a positive target."""
    valid = target > eps
    ratio = torch.maximum(pred.clamp(min=eps) / target.clamp(min=eps), target.clamp(min=eps) / pred.clamp(min=eps))
    return float(((ratio < 1.25) & valid).sum()), float(valid.sum())


def train_probe(spec: HeadSpec, tokens: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                grid: tuple[int, int], size: int, epochs: int = 30, lr: float = 3e-3, batch: int = 256,
                seed: int = 0) -> DenseHead:
    """Fit a linear head on frozen tokens (N, n, W) -> labels (N, S, S) or (N, C, S, S); mask (N,)."""
    torch.manual_seed(seed)
    head = DenseHead(tokens.shape[-1], replace(spec, hidden=0))  # no hidden layer: linear in the features
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    n = tokens.shape[0]
    steps = epochs * max(1, -(-n // batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(batch):
            loss = masked_mean(per_sample_loss(spec, head(tokens[idx], grid, size), labels[idx]), mask[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


@torch.no_grad()
def score_probe(spec: HeadSpec, head: DenseHead, tokens: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                grid: tuple[int, int], size: int, batch: int = 512) -> dict[str, float]:
    sums: dict[str, float] = {}
    d1 = [0.0, 0.0]
    for idx in torch.arange(tokens.shape[0]).split(batch):
        pred, keep = head(tokens[idx], grid, size).float(), mask[idx] > 0
        for k, v in head_sums(spec, pred, labels[idx], keep).items():
            sums[k] = sums.get(k, 0.0) + float(v)
        if spec.kind == "regression" and spec.channels == 1:
            hit, count = delta1_sums(pred[keep], labels[idx][keep])
            d1[0], d1[1] = d1[0] + hit, d1[1] + count
    out = head_metrics(spec, sums)
    if d1[1]:
        out[f"{spec.name}_delta1"] = d1[0] / d1[1]
    return out
