"""CatLIP's model: CLIP's image tower (same config, presets and initialisation) and one linear
classifier over the synset vocabulary in place of the text tower.

The config is CLIP's (:class:`ClipConfig`, so ``preset: tiny`` or ``preset: ViT-B-16`` and
``vision_tower: mobilevit_*`` build exactly the image tower a CLIP recipe would) plus
``num_classes``, the vocabulary size the label tool printed (the task checks it against the
training shards' manifest). The text-tower fields are accepted and unused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from corefm.errors import ConfigError
from corefm.registry import register_model
from projects.clip_pseudo.config import ClipConfig, ClipPresets
from projects.clip_pseudo.model import build_image_tower, init_like_clip


@dataclass
class CatlipConfig(ClipConfig):
    # synsets in the vocabulary (`corefm catlip labels` prints it; the task checks the manifest's)
    num_classes: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes < 1:
            raise ConfigError("model.num_classes must be the vocabulary size of the CatLIP shards "
                              "(`corefm catlip labels` prints it), got "
                              f"{self.num_classes}")
        if self.pretrained:
            raise ConfigError("model.pretrained is not read by catlip (it loads open_clip two-tower "
                              "checkpoints); train the image tower from scratch")


class CatlipModel(nn.Module):
    """images (B, 3, H, W) -> synset logits (B, num_classes); :meth:`features` gives the pooled,
    projected image embedding (B, embed_dim) the classifier and the probes read."""

    def __init__(self, cfg: CatlipConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # read by the task: images are resized to image_size, 3 channels
        self.num_classes, self.image_size, self.in_chans = cfg.num_classes, cfg.image_size, 3
        self.visual = build_image_tower(cfg)
        self.visual.gradient_checkpointing = cfg.gradient_checkpointing
        init_like_clip(self.visual, cfg.vision_layers)
        self.classifier = nn.Linear(cfg.embed_dim, cfg.num_classes)
        # Every synset starts rare: a bias at the log-odds of a small prior keeps the first steps'
        # BCE from being spent on pushing thousands of negatives down (RetinaNet's prior init).
        nn.init.normal_(self.classifier.weight, std=cfg.embed_dim**-0.5)
        nn.init.constant_(self.classifier.bias, -4.6)  # sigmoid(-4.6) ~ 0.01

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) -> (B, embed_dim), not normalised."""
        return self.visual(images).pooled

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) -> logits (B, num_classes)."""
        return self.classifier(self.features(images))


@register_model("catlip", CatlipConfig, presets=ClipPresets())
def build_catlip(cfg: CatlipConfig) -> nn.Module:
    return CatlipModel(cfg)
