"""Variable-batch multi-scale sampling (CVNets; Nunez et al., "On the efficacy of multi-scale data
samplers for vision applications").

Each training step takes one image side from ``data.scales`` and a batch size that keeps the pixels
per batch near those of ``train.micro_batch_size`` images at ``data.scale_base``::

    batch(side) = max(1, floor(micro_batch_size * scale_base**2 / side**2))

The side is drawn from the data seed and the step alone, so every rank (and every worker of a rank)
takes the same side at the same step without talking, and a resumed run draws the same sides again.
All micro-batches of one optimizer step share the side, hence the batch size: a loss averaged over a
micro-batch's samples and over the step's micro-batches (as DeepSpeed does) stays a per-sample mean.

The loader's workers resize the batch entry ``data.scale_key`` (float images (B, C, H, W), as the
task's transform made them at its own size) to the step's side after collating, with antialiased
bilinear interpolation. DeepSpeed's ``train_micro_batch_size_per_gpu`` stays the recipe's value:
DeepSpeed reads it for its config checks and timers, never to shape a batch. The trainer counts each
micro-batch's own rows for samples/s; its FLOPs (MFU) are those of the run's first micro-batch, close
for every side since pixels per batch are near constant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from corefm.data.errors import DataError
from corefm.data.stream import seed_int


@dataclass(frozen=True)
class ScalePlan:
    """Which side and batch size the ``n``-th batch of every rank takes (see the module docstring)."""

    sides: tuple[int, ...]
    base_side: int
    base_batch: int
    batches_per_step: int = 1
    seed: int = 0
    key: str = "image"

    def __post_init__(self) -> None:
        if not self.sides or any(s < 1 for s in self.sides):
            raise DataError(f"data.scales must be positive image sides, got {list(self.sides)}")
        if self.base_side < 1:
            raise DataError("data.scales needs data.scale_base: the side at which train.micro_batch_size "
                            f"holds (got {self.base_side})")
        if self.batches_per_step < 1:
            raise DataError(f"batches per step must be >= 1, got {self.batches_per_step}")

    def side(self, n: int) -> int:
        """The image side of rank batch ``n`` (0-based, counted over the whole run)."""
        step = n // self.batches_per_step
        return random.Random(seed_int("corefm-scale", self.seed, step)).choice(self.sides)

    def batch_size(self, side: int) -> int:
        return max(1, self.base_batch * self.base_side ** 2 // side ** 2)

    def resize(self, batch: dict[str, Any], side: int) -> dict[str, Any]:
        """``batch`` with ``batch[key]`` (B, C, H, W) resized to (B, C, side, side)."""
        images = batch.get(self.key) if isinstance(batch, dict) else None
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
            got = type(images).__name__ if not isinstance(images, torch.Tensor) else f"a {images.ndim}-d {images.dtype} tensor"
            raise DataError(f"data.scales resizes batch[{self.key!r}], which must be float images (B, C, H, W); "
                            f"the task's collate gives {got} (set data.scale_key)")
        if images.shape[-2:] != (side, side):
            images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        return {**batch, self.key: images}

    def fingerprint(self) -> dict[str, Any]:
        """What fixes the batches (the data state's fingerprint)."""
        return {"scales": list(self.sides), "scale_base": self.base_side, "scale_key": self.key}
