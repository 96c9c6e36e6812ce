"""MobileViT v1 and v2 image towers (Mehta & Rastegari, arXiv 2110.02178 and 2206.02680).

Both are a 3x3 stride-2 stem and five stages (overall stride 32): two MobileNetV2 stages, then
three stages of one stride-2 inverted residual followed by a MobileViT block on 2x2 patches. v1
adds a 1x1 expansion (4x, at most 960 channels) before pooling; v2 pools the last stage directly.
Channel tables, expansion ratios and rounding follow CoreNet's configs:

| name | stem | stage 1-2 | stage 3-5 channels | attention dims | depths | out |
|---|---|---|---|---|---|---|
| v1 XXS | 16 | 16, 24 (expand 2) | 48, 64, 80 | 64, 80, 96 | 2, 4, 3 | 320 |
| v1 XS | 16 | 32, 48 (expand 4) | 64, 80, 96 | 96, 120, 144 | 2, 4, 3 | 384 |
| v1 S | 16 | 32, 64 (expand 4) | 96, 128, 160 | 144, 192, 240 | 2, 4, 3 | 640 |
| v2 x a | 32a | 64a, 128a (expand 2) | 256a, 384a, 512a | 128a, 192a, 256a | 2, 4, 3 | 512a |

(v2 widths rounded by :func:`make_divisible`; FFNs are 2x the attention dim in both versions.)
Any input side works; sides that are multiples of 32 keep every patch grid exact down to stage 4.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from corefm.nn.mobilevit_blocks import (ConvNormAct, InvertedResidual, MobileViTBlock, MobileViTv2Block,
                                        make_divisible)

# v1 variant -> (MobileNetV2 expansion, channels of stages 1-2, (channels, attention dim, FFN dim,
# depth) of stages 3-5); CoreNet's mobilevit "xx_small", "x_small", "small".
V1_VARIANTS: dict[str, tuple[float, tuple[int, int], tuple[tuple[int, int, int, int], ...]]] = {
    "xxs": (2, (16, 24), ((48, 64, 128, 2), (64, 80, 160, 4), (80, 96, 192, 3))),
    "xs": (4, (32, 48), ((64, 96, 192, 2), (80, 120, 240, 4), (96, 144, 288, 3))),
    "s": (4, (32, 64), ((96, 144, 288, 2), (128, 192, 384, 4), (160, 240, 480, 3))),
}
V2_WIDTHS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)

# Short names shared by the classifier presets and other towers' configs (CLIP's vision_tower).
TOWERS: dict[str, tuple[int, str | float]] = {
    **{f"v1_{v}": (1, v) for v in V1_VARIANTS},
    **{f"v2_{round(w * 100):03d}": (2, w) for w in V2_WIDTHS},
}


class MobileViTOutput(NamedTuple):
    pooled: torch.Tensor  # (B, out_dim): global average of feature_map
    # (B, out_dim, h, w): h = H / 32 for sides that are multiples of 32, except that v2 rounds an odd
    # stage-5 map up to even (224 px -> 8x8; see MobileViTv2Block)
    feature_map: torch.Tensor


@torch.no_grad()
def init_mobilevit_(module: nn.Module) -> None:
    """CoreNet's MobileViT recipe initialisation: convs kaiming-normal (fan_out) with zero bias,
    norms weight 1 / bias 0, linear layers truncated normal (std 0.02) with zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class _Tower(nn.Module):
    """Stem -> stages -> optional 1x1 expansion -> global average pool."""

    stem: nn.Module
    stages: nn.ModuleList
    expand: nn.Module
    out_dim: int

    @property
    def gradient_checkpointing(self) -> bool:
        return self._checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        # Only the attention layers are recomputed: the convolutions' BatchNorms would update their
        # running statistics a second time in the recomputation.
        self._checkpointing = bool(value)
        for m in self.modules():
            if isinstance(m, (MobileViTBlock, MobileViTv2Block)):
                m.gradient_checkpointing = self._checkpointing

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: (B, in_chans, H, W) -> the five stage outputs, strides 2, 4, 8, 16, 32 (before the
        v1 expansion), for dense heads that want a pyramid."""
        x = self.stem(images)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, images: torch.Tensor) -> MobileViTOutput:
        """images: (B, in_chans, H, W) -> MobileViTOutput(pooled (B, out_dim), feature_map (B, out_dim, h, w))."""
        fm = self.expand(self.forward_features(images)[-1])
        return MobileViTOutput(fm.mean(dim=(-2, -1)), fm)


def _mv2_stage(in_ch: int, out_ch: int, blocks: int, stride: int, expand: float) -> nn.Sequential:
    return nn.Sequential(*[InvertedResidual(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, expand)
                           for i in range(blocks)])


class MobileViT(_Tower):
    """MobileViT v1 tower, variant ``xxs`` (1.3M parameters with a 1000-class head), ``xs`` (2.3M)
    or ``s`` (5.6M). Attention: 4 heads (CoreNet's recipes); dropout inside the transformer layers
    is ``dropout`` (CoreNet's ImageNet recipe: 0.1)."""

    def __init__(self, variant: str = "s", in_chans: int = 3, dropout: float = 0.0, ffn_dropout: float = 0.0,
                 num_heads: int = 4) -> None:
        super().__init__()
        if variant not in V1_VARIANTS:
            raise ValueError(f"unknown MobileViT v1 variant {variant!r}; valid: {', '.join(V1_VARIANTS)}")
        expand, (c1, c2), vit_stages = V1_VARIANTS[variant]
        self.variant = variant
        self.stem = ConvNormAct(in_chans, 16, 3, stride=2)
        stages = [_mv2_stage(16, c1, 1, 1, expand), _mv2_stage(c1, c2, 3, 2, expand)]
        ch = c2
        for out_ch, dim, ffn_dim, depth in vit_stages:
            stages.append(nn.Sequential(InvertedResidual(ch, out_ch, 2, expand),
                                        MobileViTBlock(out_ch, dim, ffn_dim, depth, num_heads, dropout=dropout,
                                                       ffn_dropout=ffn_dropout)))
            ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.out_dim = min(4 * ch, 960)
        self.expand = ConvNormAct(ch, self.out_dim, 1)
        self.gradient_checkpointing = False
        init_mobilevit_(self)


class MobileViTv2(_Tower):
    """MobileViTv2 tower at ``width_multiplier`` (0.5 to 2.0 in the paper: 1.4M to 18.4M parameters
    with a 1000-class head). Any positive multiplier builds; channel counts follow CoreNet's rounding."""

    def __init__(self, width_multiplier: float = 1.0, in_chans: int = 3, dropout: float = 0.0,
                 ffn_dropout: float = 0.0, attn_dropout: float = 0.0) -> None:
        super().__init__()
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
        a = width_multiplier
        stem = make_divisible(min(64.0, max(16.0, 32 * a)), 8, min_value=16)
        c1, c2 = make_divisible(64 * a, 16), make_divisible(128 * a, 8)
        vit_stages = [(make_divisible(c * a, 8), make_divisible(d * a, 8), depth)
                      for c, d, depth in ((256, 128, 2), (384, 192, 4), (512, 256, 3))]
        self.width_multiplier = a
        self.stem = ConvNormAct(in_chans, stem, 3, stride=2)
        stages = [_mv2_stage(stem, c1, 1, 1, 2), _mv2_stage(c1, c2, 2, 2, 2)]
        ch = c2
        for out_ch, dim, depth in vit_stages:
            stages.append(nn.Sequential(InvertedResidual(ch, out_ch, 2, 2),
                                        MobileViTv2Block(out_ch, dim, 2.0, depth, dropout=dropout,
                                                         ffn_dropout=ffn_dropout, attn_dropout=attn_dropout)))
            ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.out_dim = ch
        self.expand = nn.Identity()
        self.gradient_checkpointing = False
        init_mobilevit_(self)


def build_mobilevit_tower(name: str, in_chans: int = 3, **kwargs) -> MobileViT | MobileViTv2:
    """A tower by short name: ``v1_xxs``, ``v1_xs``, ``v1_s``, ``v2_050`` ... ``v2_200`` (v2 width x 100)."""
    if name not in TOWERS:
        raise ValueError(f"unknown MobileViT tower {name!r}; valid: {', '.join(TOWERS)}")
    version, size = TOWERS[name]
    if version == 1:
        return MobileViT(str(size), in_chans=in_chans, **kwargs)
    return MobileViTv2(float(size), in_chans=in_chans, **kwargs)
