"""AdamW with weight decay only on matrices (no decay on norms, biases and other 1-d params)."""

from __future__ import annotations

import torch
from torch import nn

from corefm.train.config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if cfg.no_decay_1d and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    # torch's AdamW, not DeepSpeed's: DeepSpeed's CPU Adam compiles for minutes on first use.
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
