"""Light task heads on the image tower's patch tokens, trained on experts' pseudo-labels.

Every head maps patch tokens (B, N, width) on a gh x gw grid to a dense map (B, C, H, W) at the
label resolution: LayerNorm -> [Linear + GELU] -> Linear to C * up * up per patch -> pixel
shuffle (each patch predicts an up x up block) -> bilinear resize to the label size. With
``up: 1`` and no hidden layer this is the usual linear dense head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from corefm.errors import ConfigError

HEAD_KINDS = ("segmentation", "binary", "regression")
DEFAULT_LOSS = {"segmentation": "ce", "binary": "bce", "regression": "l1"}
LOSSES = {"segmentation": ("ce",), "binary": ("bce",), "regression": ("l1", "mse", "cosine")}


@dataclass
class HeadSpec:
    """One pseudo-label task.

    name: head name (loss is logged as ``loss_<name>``).
    kind: ``segmentation`` (class map, cross-entropy), ``binary`` (per-channel 0/1 maps such as
        edges or box occupancy, BCE) or ``regression`` (depth, normals: L1 / MSE / cosine).
    key: the shard key holding the label (``seg.png``, ``edges.png``, ``depth.png``,
        ``normal.png``, ``boxes.json``); a sample without it is masked out of this loss.
    channels: classes for segmentation, channels otherwise (depth 1, normals 3).
    """

    name: str
    kind: Literal["segmentation", "binary", "regression"]
    key: str
    channels: int = 1
    weight: float = 1.0
    loss: str = ""  # "" = ce / bce / l1 by kind
    hidden: int = 0  # width of a hidden layer; 0 = linear head
    up: int = 1  # each patch predicts an up x up block before the final resize
    label_size: int = 0  # labels are resized to this square size; 0 = the task's image_size
    ignore_index: int = 255  # segmentation pixels with this value do not count
    # regression: pixels whose label is exactly 0 carry no value (depth.png's "no value")
    ignore_zero: bool = False

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ConfigError(f"task.heads[{self.name}].kind: {self.kind!r} is not one of {', '.join(HEAD_KINDS)}")
        self.loss = self.loss or DEFAULT_LOSS[self.kind]
        if self.loss not in LOSSES[self.kind]:
            raise ConfigError(f"task.heads[{self.name}].loss: {self.loss!r} does not fit kind {self.kind} "
                              f"(use {', '.join(LOSSES[self.kind])})")
        if self.channels < 1 or self.up < 1 or self.hidden < 0:
            raise ConfigError(f"task.heads[{self.name}]: channels and up must be >= 1, hidden >= 0")
        if self.kind == "segmentation" and self.channels < 2:
            raise ConfigError(f"task.heads[{self.name}]: segmentation needs channels >= 2 (classes)")
        if self.loss == "cosine" and self.channels < 2:
            raise ConfigError(f"task.heads[{self.name}]: the cosine loss needs vector labels (channels >= 2)")


class DenseHead(nn.Module):
    """Patch tokens (B, N, width) on grid (gh, gw) -> logits / values (B, C, size, size)."""

    def __init__(self, width: int, spec: HeadSpec) -> None:
        super().__init__()
        self.spec = spec
        self.norm = nn.LayerNorm(width)
        self.hidden = nn.Sequential(nn.Linear(width, spec.hidden), nn.GELU()) if spec.hidden else nn.Identity()
        self.out = nn.Linear(spec.hidden or width, spec.channels * spec.up * spec.up)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
        b = tokens.shape[0]
        x = self.out(self.hidden(self.norm(tokens)))  # (B, N, C*up*up)
        x = x.transpose(1, 2).reshape(b, -1, grid[0], grid[1])
        if self.spec.up > 1:
            x = F.pixel_shuffle(x, self.spec.up)  # (B, C, gh*up, gw*up)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False).to(x.dtype)
        return x


def check_heads(specs: list[HeadSpec]) -> None:
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"task.heads: head names must be unique, got {names}")
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"task.heads: two heads read the same shard key ({keys})")


def build_heads(width: int, specs: list[HeadSpec]) -> nn.ModuleDict:
    check_heads(specs)
    return nn.ModuleDict({s.name: DenseHead(width, s) for s in specs})
