"""AdamW with weight decay only on matrices (no decay on norms, biases and other 1-d params)."""

from __future__ import annotations

import torch
from torch import nn

from corefm.train.config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Trainable parameters grouped by (weight decay, lr multiplier).

    A model or task may define ``param_lr_scales() -> {parameter name: multiplier}`` (e.g.
    SAM-CLIP trains its backbone at 0.1x); those parameters get a group with ``lr = cfg.lr * m``.
    The schedule (LambdaLR) scales each group's own base lr, so the ratios hold at every step.
    Without multipliers the groups are [decay, no decay], as checkpoints of earlier runs expect.
    """
    scales_fn = getattr(model, "param_lr_scales", None)
    scales = scales_fn() if scales_fn is not None else {}
    names = {n for n, _ in model.named_parameters()}
    unknown = sorted(set(scales) - names)
    if unknown:
        raise ValueError(f"param_lr_scales names parameters the model does not have: {', '.join(unknown[:5])}")
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (cfg.no_decay_1d and p.ndim <= 1)
        groups.setdefault((decay, float(scales.get(name, 1.0))), []).append(p)
    order = sorted(groups, key=lambda key: (key[1] != 1.0, not key[0], -key[1]))
    return [{"params": groups[key], "weight_decay": cfg.weight_decay if key[0] else 0.0, "lr": cfg.lr * key[1]}
            for key in order]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    # torch's AdamW, not DeepSpeed's: DeepSpeed's CPU Adam compiles for minutes on first use.
    # fused=True: one kernel over all parameters instead of a dozen foreach passes (CPU and CUDA
    # both have it): 10 ms instead of 33 ms for 16M fp32 parameters on one thread of this CPU.
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)
