"""Recorded augmentations: drawn once, stored as numbers, replayed exactly (dataset reinforcement).

An augmentation here is a random resized crop (a box in the image's own pixels) and an optional
horizontal flip. :func:`draw` picks one from a seeded ``random.Random``, so the reinforce tool
draws the same ones again when it resumes; :func:`apply` replays one on a PIL image at any output
side, so a teacher at 64 px and a student at 28 px see the same view of the image.
:func:`view_digest` fingerprints a view's pixels (the tensor a model gets), which the tool stores
so that a replay can be checked bit for bit.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image


@dataclass
class AugmentSpec:
    """What :func:`draw` draws from: crop area fraction and aspect ratio ranges, flips."""

    scale: list[float] = field(default_factory=lambda: [0.35, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: bool = True


def draw(spec: AugmentSpec, width: int, height: int, rng: random.Random) -> dict[str, Any]:
    """One augmentation for a ``width`` x ``height`` image: ``{"box": [top, left, h, w], "flip": 0|1}``.

    The box is the usual random-resized-crop draw: an area fraction uniform in ``spec.scale``, a
    log-uniform aspect ratio in ``spec.ratio``, up to 10 tries to fit; else the centred largest box
    within the ratio range (as torchvision does)."""
    area = width * height
    log_lo, log_hi = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    box = None
    for _ in range(10):
        target = area * rng.uniform(spec.scale[0], spec.scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            box = [rng.randint(0, height - h), rng.randint(0, width - w), h, w]
            break
    if box is None:
        in_ratio = width / height
        if in_ratio < spec.ratio[0]:
            w, h = width, round(width / spec.ratio[0])
        elif in_ratio > spec.ratio[1]:
            w, h = round(height * spec.ratio[1]), height
        else:
            w, h = width, height
        box = [(height - h) // 2, (width - w) // 2, h, w]
    flip = int(spec.hflip and rng.random() < 0.5)
    return {"box": [int(v) for v in box], "flip": flip}


def apply(img: Image.Image, aug: dict[str, Any], size: int) -> Image.Image:
    """The view ``aug`` describes: its box cropped, resized to ``size`` x ``size`` (bilinear), flipped."""
    top, left, h, w = aug["box"]
    out = img.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
    return out.transpose(Image.FLIP_LEFT_RIGHT) if aug["flip"] else out


def to_tensor(img: Image.Image, mean: float | list[float], std: float | list[float]) -> torch.Tensor:
    """PIL image (L or RGB) -> (C, H, W) float32 in [0, 1], normalised with per-channel mean/std."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return (x - m) / s


def view_digest(x: torch.Tensor) -> str:
    """16 hex digits fingerprinting a view tensor's exact float32 values."""
    data = x.detach().to(torch.float32).contiguous().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=8).hexdigest()
