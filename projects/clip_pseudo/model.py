"""CLIP on corefm's towers: ViT image tower, causal text tower, projections, logit scale, task heads.

Tensor names mirror open_clip's CLIP one to one (see :mod:`projects.clip_pseudo.openclip_io`), so
weights move between the two without reshaping beyond transposed projections. The image tower may
instead be a corefm MobileViT (``model.vision_tower``); that model has no open_clip counterpart.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from corefm.nn import TextTransformer, VisionOutput, VisionTransformer, build_mobilevit_tower
from corefm.registry import register_model
from projects.clip_pseudo.config import ClipConfig, ClipPresets, require_vit_tower
from projects.clip_pseudo.heads import HeadSpec, build_heads

# As open_clip: logit_scale stays in [0, log 100], clamped after every optimizer step (the CLIP task's
# parameter_bounds, corefm/train/bounds.py), never inside the forward, where past the bound its
# gradient would be zero and it could not come back.
LOGIT_SCALE_BOUNDS = (0.0, math.log(100.0))


class ClipOutput(NamedTuple):
    image_features: torch.Tensor  # (B, embed_dim), L2-normalised
    text_features: torch.Tensor  # (B, embed_dim), L2-normalised
    logit_scale: torch.Tensor  # (1,) exp(logit_scale), in [1, 100] while training
    logit_bias: torch.Tensor | None  # (1,) SigLIP bias, or None
    dense: dict[str, torch.Tensor]  # head name -> (B, C, S, S)


def eot_length(tokens: torch.Tensor) -> int:
    """Longest prefix that still holds every row's end-of-text token (the row's largest id)."""
    return int(tokens.argmax(dim=-1).max().item()) + 1


class MobileViTImageTower(nn.Module):
    """A corefm MobileViT tower (3 channels) and a bias-free projection to ``embed_dim``, called like
    the ViT tower: images (B, 3, H, W) -> VisionOutput(pooled (B, embed_dim), patch_tokens (B, h * w,
    width)), the tokens being the last feature map (stride 32) in row-major order."""

    def __init__(self, name: str, embed_dim: int) -> None:
        super().__init__()
        self.tower = build_mobilevit_tower(name, in_chans=3)
        self.width = self.tower.out_dim
        self.proj = nn.Linear(self.width, embed_dim, bias=False)

    @property
    def gradient_checkpointing(self) -> bool:
        return self.tower.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.tower.gradient_checkpointing = value

    def forward(self, images: torch.Tensor) -> VisionOutput:
        """images: (B, 3, H, W) -> VisionOutput(pooled (B, embed_dim), patch_tokens (B, h * w, width))."""
        out = self.tower(images)
        return VisionOutput(self.proj(out.pooled), rearrange(out.feature_map, "b c h w -> b (h w) c"))


def build_image_tower(cfg: ClipConfig) -> VisionTransformer | MobileViTImageTower:
    """The image tower ``cfg`` describes (``model.vision_tower``): images (B, 3, H, W) ->
    VisionOutput(pooled (B, embed_dim), patch_tokens (B, n, width)). CatLIP builds the same one."""
    if cfg.mobilevit_name is not None:
        return MobileViTImageTower(cfg.mobilevit_name, cfg.embed_dim)
    return VisionTransformer(cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers, cfg.vision_heads,
                             mlp_ratio=cfg.vision_mlp_ratio, in_chans=3, output_dim=cfg.embed_dim,
                             mlp="quick_gelu" if cfg.quick_gelu else "gelu")


@torch.no_grad()
def init_like_clip(tower: nn.Module, layers: int, ffn: bool = False) -> None:
    """CLIP's initialisation of one tower (open_clip's TextTransformer.init_parameters; zero attention
    biases as nn.MultiheadAttention has them; the projection at width^-0.5; the FFN only with ``ffn``,
    as open_clip does for the text tower). A MobileViT tower keeps its own (CoreNet's) initialisation;
    only its projection is set."""
    if isinstance(tower, MobileViTImageTower):
        nn.init.normal_(tower.proj.weight, std=tower.width**-0.5)
        return
    width = tower.width
    proj_std, attn_std, fc_std = width**-0.5 * (2 * layers) ** -0.5, width**-0.5, (2 * width) ** -0.5
    for block in tower.blocks:
        nn.init.normal_(block.attn.qkv_proj.weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.zeros_(block.attn.qkv_proj.bias)
        nn.init.zeros_(block.attn.out_proj.bias)
        if ffn:
            nn.init.normal_(block.ffn.fc1.weight, std=fc_std)
            nn.init.normal_(block.ffn.fc2.weight, std=proj_std)
    nn.init.normal_(tower.proj.weight, std=width**-0.5)


class ClipModel(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mlp = "quick_gelu" if cfg.quick_gelu else "gelu"
        self.visual = build_image_tower(cfg)
        self.text = TextTransformer(cfg.vocab_size, cfg.context_length, cfg.text_width, cfg.text_layers,
                                    cfg.text_heads, mlp_ratio=cfg.text_mlp_ratio, output_dim=cfg.embed_dim, mlp=mlp)
        self.visual.gradient_checkpointing = self.text.gradient_checkpointing = cfg.gradient_checkpointing
        # Shape [1], not a 0-dim scalar: DeepSpeed 0.19.8 refuses 0-dim parameters.
        self.logit_scale = nn.Parameter(torch.full((1,), float(cfg.init_logit_scale)))
        self.logit_bias = (nn.Parameter(torch.full((1,), float(cfg.init_logit_bias)))
                           if cfg.init_logit_bias is not None else None)
        self.heads = nn.ModuleDict()
        self.head_specs: list[HeadSpec] = []
        init_like_clip(self.text, cfg.text_layers, ffn=True)
        init_like_clip(self.visual, cfg.vision_layers)

    def set_heads(self, specs: list[HeadSpec]) -> None:
        """Attach pseudo-label heads (the task does this before training; [] = plain CLIP)."""
        if specs:
            require_vit_tower(self.cfg, "pseudo-label dense heads (task.heads)")
        self.heads = build_heads(self.cfg.vision_width, specs)
        self.head_specs = list(specs)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """images: (B, 3, H, W) -> (B, embed_dim). Same call as open_clip's CLIP.encode_image."""
        pooled = self.visual(images).pooled
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """tokens: (B, T) long, EOT = the row's largest id -> (B, embed_dim).

        Positions after the last EOT of the batch are dropped before the tower runs: attention is
        causal and the EOT token is pooled, so they cannot change the result, and short captions
        in a 77-token context then cost a fraction of the compute. On a GPU the cut is made on the
        host, in the data workers (:meth:`ClipTask.collate`), so no step waits to read it.
        """
        if tokens.device.type == "cpu":  # elsewhere reading the EOT position would wait for the device;
            tokens = tokens[:, : eot_length(tokens)]  # training batches arrive cut by ClipTask.collate
        pooled = self.text(tokens)
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def forward_dense(self, vision: VisionOutput, grid: tuple[int, int], size: dict[str, int]) -> dict[str, torch.Tensor]:
        """Head outputs from patch tokens on a (gh, gw) grid; size: head name -> label size."""
        return {name: head(vision.patch_tokens, grid, size[name]) for name, head in self.heads.items()}

    def forward(self, images: torch.Tensor, tokens: torch.Tensor,
                label_sizes: dict[str, int] | None = None) -> ClipOutput:
        """images: (B, 3, H, W), tokens: (B, T) -> ClipOutput (normalised features, scale, head maps)."""
        vision = self.visual(images)
        image_features = F.normalize(vision.pooled, dim=-1)
        text_features = self.encode_text(tokens, normalize=True)
        sizes = label_sizes or {name: images.shape[-1] for name in self.heads}
        p = self.cfg.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        dense = self.forward_dense(vision, grid, sizes) if len(self.heads) else {}
        scale = self.logit_scale.exp()
        return ClipOutput(image_features, text_features, scale, self.logit_bias, dense)


@register_model("clip", ClipConfig, presets=ClipPresets())
def build_clip(cfg: ClipConfig) -> nn.Module:
    model = ClipModel(cfg)
    if cfg.pretrained:
        from projects.clip_pseudo.openclip_io import load_open_clip_weights

        load_open_clip_weights(model, cfg.pretrained)
    return model
