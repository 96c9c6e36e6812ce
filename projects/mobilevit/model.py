"""MobileViT classifier: a corefm MobileViT tower (v1 or v2), dropout and a linear head on the pooled map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from corefm.errors import ConfigError
from corefm.nn import MobileViT, MobileViTv2
from corefm.nn.mobilevit import TOWERS, V1_VARIANTS, init_mobilevit_
from corefm.registry import register_model


@dataclass
class MobileViTConfig:
    version: Literal[1, 2] = 2
    # v1 only: xxs | xs | s (default s); a v2 model refuses it
    variant: str | None = None
    # v2 only: the paper's widths are 0.5 ... 2.0 (default 1.0); a v1 model refuses it
    width_multiplier: float | None = None
    num_classes: int = 1000
    # the side the classification task resizes images to; the network itself takes any side
    image_size: int = 256
    in_chans: int = 3
    # before the linear head (CoreNet's classifier_dropout)
    dropout: float = 0.0
    # on the attention and FFN outputs inside every transformer layer (CoreNet's mit/mitv2 dropout)
    block_dropout: float = 0.0
    # recompute the attention layers in backward (the convolutions, with their BatchNorms, are kept)
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.version == 1 and self.width_multiplier is not None:
            raise ConfigError("model.width_multiplier is a MobileViT v2 setting; v1 sizes are model.variant "
                              f"({', '.join(V1_VARIANTS)})")
        if self.version == 2 and self.variant is not None:
            raise ConfigError("model.variant is a MobileViT v1 setting; v2 sizes are model.width_multiplier "
                              "(0.5 ... 2.0)")
        if self.variant is not None and self.variant not in V1_VARIANTS:
            raise ConfigError(f"model.variant: unknown MobileViT v1 variant {self.variant!r} "
                              f"(valid: {', '.join(V1_VARIANTS)})")
        if self.width_multiplier is not None and self.width_multiplier <= 0:
            raise ConfigError(f"model.width_multiplier must be positive, got {self.width_multiplier}")
        if self.in_chans < 1 or self.image_size < 1 or self.num_classes < 1:
            raise ConfigError(f"model.in_chans, image_size and num_classes must be positive, got "
                              f"{self.in_chans}, {self.image_size}, {self.num_classes}")


def _preset(name: str) -> dict:
    version, size = TOWERS[name]
    if version == 1:
        # CoreNet's v1 ImageNet recipe: 0.1 dropout in the transformer layers and before the head
        return dict(version=1, variant=size, dropout=0.1, block_dropout=0.1)
    return dict(version=2, width_multiplier=size)


# The papers' sizes at 256 px: v1_xxs, v1_xs, v1_s, v2_050 ... v2_200 (`preset: v2_050`).
PRESETS = {name: _preset(name) for name in TOWERS}


class MobileViTClassifier(nn.Module):
    def __init__(self, cfg: MobileViTConfig):
        super().__init__()
        self.cfg = cfg
        # read by the classification task: labels are checked against num_classes, images resized
        # to image_size with in_chans channels
        self.num_classes, self.image_size, self.in_chans = cfg.num_classes, cfg.image_size, cfg.in_chans
        if cfg.version == 1:
            self.tower: MobileViT | MobileViTv2 = MobileViT(cfg.variant or "s", in_chans=cfg.in_chans,
                                                            dropout=cfg.block_dropout)
        else:
            self.tower = MobileViTv2(1.0 if cfg.width_multiplier is None else cfg.width_multiplier,
                                     in_chans=cfg.in_chans, dropout=cfg.block_dropout)
        self.tower.gradient_checkpointing = cfg.gradient_checkpointing
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(self.tower.out_dim, cfg.num_classes)
        init_mobilevit_(self.head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, C, H, W) -> logits (B, num_classes)."""
        return self.head(self.dropout(self.tower(images).pooled))


@register_model("mobilevit", MobileViTConfig, presets=PRESETS)
def build_mobilevit(cfg: MobileViTConfig) -> nn.Module:
    return MobileViTClassifier(cfg)
