"""Value checks of a parsed recipe: each bad number is one line naming the key, before anything runs.

Types are checked where the recipe is read (corefm.train.config); these are the ranges a type does
not say: a batch of 0, a negative or NaN learning rate, a log interval of 0 (which would fail only
after start-up), a step count below 1 (which would export an untrained model and exit 0).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from corefm.errors import ConfigError


def _int_at_least(n: int) -> Callable[[Any], bool]:
    return lambda v: v >= n


def _finite(lo: float, lo_open: bool = False, hi: float = math.inf, hi_open: bool = False) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        return math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return ok


# (key, check, what a valid value is)
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("train.max_steps", _int_at_least(1), "at least 1"),
    ("train.micro_batch_size", _int_at_least(1), "at least 1"),
    ("train.grad_accum", _int_at_least(1), "at least 1"),
    ("train.grad_clip", _finite(0.0), "a finite number >= 0 (0 turns clipping off)"),
    ("train.max_consecutive_nonfinite", _int_at_least(1), "at least 1"),
    ("optim.lr", _finite(0.0, lo_open=True), "a finite number > 0"),
    ("optim.eps", _finite(0.0, lo_open=True), "a finite number > 0"),
    ("optim.weight_decay", _finite(0.0), "a finite number >= 0"),
    ("optim.betas", lambda v: all(_finite(0.0, hi=1.0, hi_open=True)(b) for b in v), "two numbers in [0, 1)"),
    ("schedule.warmup_steps", _int_at_least(0), "at least 0"),
    ("schedule.min_lr_ratio", _finite(0.0, hi=1.0), "in [0, 1]"),
    ("log.every", _int_at_least(1), "at least 1"),
    ("eval.every", _int_at_least(0), "at least 0 (0: only at the end)"),
    ("eval.max_batches", _int_at_least(0), "at least 0 (0: all)"),
    ("eval.batch_size", _int_at_least(0), "at least 0 (0: train.micro_batch_size)"),
    ("checkpoint.every", _int_at_least(0), "at least 0 (0: only at the end and on a stop signal)"),
    ("checkpoint.keep_last", _int_at_least(0), "at least 0 (0: keep all)"),
    ("data.num_workers", _int_at_least(0), "at least 0"),
    ("data.shuffle_buffer", _int_at_least(0), "at least 0"),
    ("data.max_skip_fraction", _finite(0.0, hi=1.0), "in [0, 1]"),
    ("ema.momentum", _finite(0.0, hi=1.0, hi_open=True), "in [0, 1) (0: no EMA)"),
]


def check_values(recipe: Any) -> None:
    """Raise ConfigError for the first key whose value is out of range."""
    for key, ok, want in RULES:
        value: Any = recipe
        for part in key.split("."):
            value = getattr(value, part)
        if not ok(value):
            raise ConfigError(f"{key} must be {want}, got {value!r}")
