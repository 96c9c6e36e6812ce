"""ViT classifier: corefm's ViT image tower plus a linear head on the pooled token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from corefm.nn import VisionTransformer
from corefm.registry import register_model


@dataclass
class ViTClassifierConfig:
    image_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    width: int = 192
    layers: int = 12
    heads: int = 3
    mlp_ratio: float = 4.0
    num_classes: int = 10
    pool: Literal["cls", "mean"] = "cls"
    gradient_checkpointing: bool = False


class ViTClassifier(nn.Module):
    def __init__(self, cfg: ViTClassifierConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes  # read by the classification task to check labels
        self.tower = VisionTransformer(cfg.image_size, cfg.patch_size, cfg.width, cfg.layers, cfg.heads,
                                       mlp_ratio=cfg.mlp_ratio, in_chans=cfg.in_chans, pool=cfg.pool)
        self.tower.gradient_checkpointing = cfg.gradient_checkpointing
        self.head = nn.Linear(cfg.width, cfg.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, C, H, W) -> logits (B, num_classes)."""
        return self.head(self.tower(images).pooled)


@register_model("vit_classifier", ViTClassifierConfig)
def build_vit_classifier(cfg: ViTClassifierConfig) -> nn.Module:
    return ViTClassifier(cfg)
