"""Learning-rate schedules: linear warmup then cosine, linear or constant decay."""

from __future__ import annotations

import math

import torch

from corefm.train.config import ScheduleConfig


def lr_factor(step: int, cfg: ScheduleConfig, max_steps: int) -> float:
    """Multiplier on the peak lr at optimizer step ``step`` (0-based)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == "constant":
        return 1.0
    span = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.name == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # linear
        decay = 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, max_steps: int, last_step: int = 0):
    """A LambdaLR, stepped by the trainer once per step. Its state is the step alone, so a resumed
    run rebuilds it at ``last_step`` (each group's base lr taken from its ``initial_lr``) rather than
    loading it: a recipe's new lr or schedule then applies from that step on."""
    if not last_step:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, max_steps))
    # last_epoch = last_step - 1: LambdaLR's construction takes the one step to last_step itself.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, max_steps), last_epoch=last_step - 1)
