"""Vision Transformer image tower (open_clip-compatible shapes)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from corefm.nn.block import TransformerBlock
from corefm.nn.embeddings import LearnedPositions, PatchEmbed
from corefm.nn.norms import build_norm

POOL_KINDS = ("cls", "mean")


class VisionOutput(NamedTuple):
    pooled: torch.Tensor  # (B, output_dim or width), projected when output_dim is set
    patch_tokens: torch.Tensor  # (B, N, width) after ln_post, row-major over the patch grid


class VisionTransformer(nn.Module):
    """Patch embed -> [class token] -> learned positions -> ln_pre -> blocks -> ln_post -> pool -> proj.

    ViT-B/16 as in open_clip: image_size=224, patch_size=16, width=768, layers=12, heads=12,
    output_dim=512 (mlp_ratio 4 gives 3072). Inputs at another resolution (a multiple of
    the patch size) get bicubically resized patch positions.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
        output_dim: int | None = None,
        pool: str = "cls",
        norm: str = "layer_norm",
        norm_eps: float = 1e-5,
        mlp: str = "gelu",
        bias: bool = True,
        patch_bias: bool = False,
        qk_norm: bool = False,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        if pool not in POOL_KINDS:
            raise ValueError(f"unknown pool {pool!r}; valid: {', '.join(POOL_KINDS)}")
        self.width = width
        self.pool = pool
        self.output_dim = output_dim or width
        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, width, bias=patch_bias)
        self.grid_size = self.patch_embed.grid_size
        self.num_patches = self.patch_embed.num_patches
        self.num_prefix = 1 if pool == "cls" else 0
        scale = width**-0.5
        self.class_token = nn.Parameter(torch.randn(width) * scale) if pool == "cls" else None
        self.positions = LearnedPositions(self.num_prefix + self.num_patches, width, init_std=scale)
        self.ln_pre = build_norm(norm, width, norm_eps)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                width,
                heads,
                int(width * mlp_ratio),
                mlp=mlp,
                norm=norm,
                norm_eps=norm_eps,
                bias=bias,
                qk_norm=qk_norm,
                layer_scale=layer_scale,
            )
            for _ in range(layers)
        )
        self.ln_post = build_norm(norm, width, norm_eps)
        self.proj = nn.Linear(width, output_dim, bias=False) if output_dim is not None else None
        self.gradient_checkpointing = False

    def position_table(self, grid: tuple[int, int]) -> torch.Tensor:
        """Positions for a patch grid (gh, gw) -> (num_prefix + gh * gw, width)."""
        table = self.positions.weight
        if grid == self.grid_size:
            return table
        prefix, patches = table[: self.num_prefix], table[self.num_prefix :]
        patches = rearrange(patches, "(h w) d -> 1 d h w", h=self.grid_size[0])
        patches = F.interpolate(patches.float(), size=grid, mode="bicubic", align_corners=False).to(table.dtype)
        return torch.cat((prefix, rearrange(patches, "1 d h w -> (h w) d")), dim=0)

    def forward(self, images: torch.Tensor) -> VisionOutput:
        """images: (B, C, H, W) -> VisionOutput(pooled (B, output_dim), patch_tokens (B, N, width))."""
        x = self.patch_embed(images)
        grid = (images.shape[-2] // self.patch_embed.patch_size[0], images.shape[-1] // self.patch_embed.patch_size[1])
        if self.class_token is not None:
            cls = self.class_token.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat((cls, x), dim=1)
        x = x + self.position_table(grid).to(x.dtype)
        x = self.ln_pre(x)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.ln_post(x)
        pooled = x[:, 0] if self.pool == "cls" else x.mean(dim=1)
        if self.proj is not None:
            pooled = self.proj(pooled)
        return VisionOutput(pooled, x[:, self.num_prefix :])
