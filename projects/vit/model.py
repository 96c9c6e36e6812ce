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


# DeiT's sizes (Touvron et al. 2021, Table 1) at 224 px in 16 px patches: `preset: deit_small`.
PRESETS = {
    "deit_tiny": dict(image_size=224, patch_size=16, width=192, layers=12, heads=3),
    "deit_small": dict(image_size=224, patch_size=16, width=384, layers=12, heads=6),
    "deit_base": dict(image_size=224, patch_size=16, width=768, layers=12, heads=12),
}


class ViTClassifier(nn.Module):
    def __init__(self, cfg: ViTClassifierConfig):
        super().__init__()
        self.cfg = cfg
        # read by the classification task: labels are checked against num_classes, images resized
        # to image_size with in_chans channels
        self.num_classes, self.image_size, self.in_chans = cfg.num_classes, cfg.image_size, cfg.in_chans
        self.tower = VisionTransformer(cfg.image_size, cfg.patch_size, cfg.width, cfg.layers, cfg.heads,
                                       mlp_ratio=cfg.mlp_ratio, in_chans=cfg.in_chans, pool=cfg.pool)
        self.tower.gradient_checkpointing = cfg.gradient_checkpointing
        self.head = nn.Linear(cfg.width, cfg.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, C, H, W) -> logits (B, num_classes)."""
        return self.head(self.tower(images).pooled)


@register_model("vit_classifier", ViTClassifierConfig, presets=PRESETS)
def build_vit_classifier(cfg: ViTClassifierConfig) -> nn.Module:
    return ViTClassifier(cfg)
