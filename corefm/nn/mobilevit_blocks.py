"""Building blocks of MobileViT v1 (arXiv 2110.02178) and v2 (arXiv 2206.02680).

Layouts (which convolutions carry BatchNorm, SiLU or a bias; how pixels are grouped into patches)
follow Apple's CoreNet, so a CoreNet checkpoint maps onto these modules by renaming alone.

Shapes: feature maps are (B, C, H, W). v1 unfolds a map into (B * P, N, D) token sequences, v2 into
(B, D, P, N), where P = ph * pw is the number of pixels in a patch and N = (H / ph) * (W / pw) the
number of patches: attention runs across patches, separately for each pixel position in a patch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from corefm.nn.attention import Attention
from corefm.nn.norms import BatchNorm2d


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``, default the
    divisor), going up one step when rounding would lose more than 10%: the MobileNet/CoreNet rule
    behind every channel count of both MobileViTs."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * value else rounded)


class ConvNormAct(nn.Sequential):
    """Conv2d (bias only without a norm) -> optional BatchNorm2d -> optional SiLU, "same" padding.

    (B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride). The BatchNorm is corefm's float32 one:
    under DeepSpeed bf16 the weights are bf16 but the running statistics stay float32, which torch's
    own BatchNorm refuses.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 norm: bool = True, act: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=(kernel_size - 1) // 2, groups=groups,
                              bias=bias)
        if norm:
            self.norm = BatchNorm2d(out_ch)
        if act:
            self.act = nn.SiLU()


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (BN, SiLU) -> 3x3 depthwise (BN, SiLU) -> 1x1 project (BN).

    (B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride); the input is added back when the shapes
    allow it (stride 1, in_ch == out_ch). The projection has no activation: a ReLU-family function
    on the narrow output would discard information (MobileNetV2's linear bottleneck).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = make_divisible(int(round(in_ch * expand_ratio)), 8)
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(in_ch, hidden, 1))
        layers += [ConvNormAct(hidden, hidden, 3, stride, groups=hidden), ConvNormAct(hidden, out_ch, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def run_global(layers: nn.Module, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """Apply the attention layers, optionally under activation checkpointing. They hold Layer/Group
    norms only, no BatchNorm, so the recomputation in backward does not update running statistics twice."""
    if checkpointed:
        return checkpoint(layers, x, use_reentrant=False)
    return layers(x)


# ---------------------------------------------------------------------------------------------
# v1: multi-head self-attention over patch tokens
# ---------------------------------------------------------------------------------------------


class TransformerLayer(nn.Module):
    """Pre-norm encoder layer of MobileViT v1: x + attn(LN(x)), x + FFN(LN(x)), with a SiLU FFN.

    x: (B', N, dim) -> (B', N, dim). Linear layers carry biases, as CoreNet's.
    """

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, dropout: float = 0.0, ffn_dropout: float = 0.0) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, bias=True)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.SiLU(), nn.Dropout(ffn_dropout), nn.Linear(ffn_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x)))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


def unfold_v1(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) with H, W multiples of the patch -> (B * P, N, C): one sequence of N patch
    tokens per pixel position (ph, pw); CoreNet's ordering (patches row-major, pixels row-major)."""
    ph, pw = patch
    return rearrange(x, "b c (nh ph) (nw pw) -> (b ph pw) (nh nw) c", ph=ph, pw=pw)


def fold_v1(tokens: torch.Tensor, patch: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`unfold_v1`: (B * P, N, C) on a (nh, nw) patch grid -> (B, C, nh * ph, nw * pw)."""
    ph, pw = patch
    return rearrange(tokens, "(b ph pw) (nh nw) c -> b c (nh ph) (nw pw)", ph=ph, pw=pw, nh=grid[0], nw=grid[1])


class MobileViTBlock(nn.Module):
    """MobileViT v1 block: local 3x3 conv -> 1x1 to ``dim`` -> unfold -> transformer layers + LN ->
    fold -> 1x1 back to ``channels`` (BN, SiLU) -> concat with the input -> 3x3 fusion (BN, SiLU).

    (B, channels, H, W) -> (B, channels, H, W). A map whose side is not a multiple of the patch is
    resized bilinearly up to the next multiple before unfolding and back after folding, as CoreNet
    does, so any input side works (e.g. 7x7 at the last stage of a 224 px input).
    """

    def __init__(self, channels: int, dim: int, ffn_dim: int, depth: int, num_heads: int = 4,
                 patch: tuple[int, int] = (2, 2), dropout: float = 0.0, ffn_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"transformer dim {dim} is not a multiple of num_heads {num_heads}")
        self.patch = patch
        # The 1x1 into the transformer has neither norm nor bias: the first LayerNorm follows it.
        self.local_rep = nn.Sequential(ConvNormAct(channels, channels, 3), ConvNormAct(channels, dim, 1, norm=False,
                                                                                      act=False))
        self.global_rep = nn.Sequential(*[TransformerLayer(dim, ffn_dim, num_heads, dropout, ffn_dropout)
                                          for _ in range(depth)], nn.LayerNorm(dim))
        self.conv_proj = ConvNormAct(dim, channels, 1)
        self.fusion = ConvNormAct(2 * channels, channels, 3)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fm = self.local_rep(x)
        h, w = fm.shape[-2:]
        ph, pw = self.patch
        size = (math.ceil(h / ph) * ph, math.ceil(w / pw) * pw)
        if size != (h, w):
            # Padding would need masking inside attention; resizing keeps every token real.
            fm = F.interpolate(fm, size=size, mode="bilinear", align_corners=False)
        tokens = unfold_v1(fm, self.patch)
        tokens = run_global(self.global_rep, tokens, self.gradient_checkpointing and self.training)
        fm = fold_v1(tokens, self.patch, (size[0] // ph, size[1] // pw))
        if size != (h, w):
            fm = F.interpolate(fm, size=(h, w), mode="bilinear", align_corners=False)
        return self.fusion(torch.cat((x, self.conv_proj(fm)), dim=1))


# ---------------------------------------------------------------------------------------------
# v2: separable (linear) self-attention
# ---------------------------------------------------------------------------------------------


def unfold_v2(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """(B, D, H, W) with H, W multiples of the patch -> (B, D, P, N): channels first, as F.unfold with
    kernel = stride = patch groups them (no transpose: the attention runs 1x1 convs on this layout)."""
    ph, pw = patch
    return rearrange(x, "b d (nh ph) (nw pw) -> b d (ph pw) (nh nw)", ph=ph, pw=pw)


def fold_v2(tokens: torch.Tensor, patch: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`unfold_v2`: (B, D, P, N) on a (nh, nw) patch grid -> (B, D, nh * ph, nw * pw)."""
    ph, pw = patch
    return rearrange(tokens, "b d (ph pw) (nh nw) -> b d (nh ph) (nw pw)", ph=ph, pw=pw, nh=grid[0], nw=grid[1])


class SeparableSelfAttention(nn.Module):
    """MobileViTv2's separable self-attention: cost O(N * dim) in the number of tokens N.

    x: (B, dim, P, N) -> (B, dim, P, N). One 1x1 conv gives a scalar score per token (the inner
    product with a learned latent query), a key and a value. softmax over the N tokens of each
    pixel position turns the scores into weights; the weighted sum of keys is one context vector
    (B, dim, P, 1), broadcast onto every token as relu(value) * context, then projected. No N x N
    matrix is ever formed. 1x1 convs rather than Linear keep the channel-first layout and avoid a
    transpose (CoreNet's choice; its weights load as they are).
    """

    def __init__(self, dim: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.qkv_proj = nn.Conv2d(dim, 1 + 2 * dim, 1)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.out_proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value = self.qkv_proj(x).split([1, self.dim, self.dim], dim=1)
        scores = self.attn_dropout(query.softmax(dim=-1))  # (B, 1, P, N)
        context = (key * scores).sum(dim=-1, keepdim=True)  # (B, dim, P, 1)
        return self.out_proj(F.relu(value) * context)


class LinearAttnFFN(nn.Module):
    """Pre-norm layer of MobileViTv2: x + attn(LN2d(x)), x + FFN(LN2d(x)), on (B, dim, P, N).

    LN2d is GroupNorm with one group: statistics over all of (dim, P, N) per sample, CoreNet's
    ``layer_norm_2d``. The FFN is 1x1 conv (bias) -> SiLU -> 1x1 conv (bias).
    """

    def __init__(self, dim: int, ffn_dim: int, dropout: float = 0.0, ffn_dropout: float = 0.0,
                 attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.attn_norm = nn.GroupNorm(1, dim)
        self.attn = SeparableSelfAttention(dim, attn_dropout)
        self.ffn_norm = nn.GroupNorm(1, dim)
        self.ffn = nn.Sequential(nn.Conv2d(dim, ffn_dim, 1), nn.SiLU(), nn.Dropout(ffn_dropout),
                                 nn.Conv2d(ffn_dim, dim, 1))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x)))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class MobileViTv2Block(nn.Module):
    """MobileViTv2 block: 3x3 depthwise (BN, SiLU) -> 1x1 to ``dim`` -> unfold -> LinearAttnFFN
    layers + LN2d -> fold -> 1x1 back to ``channels`` (BN, no activation).

    (B, channels, H, W) -> (B, channels, H', W'), H' and W' the next multiples of the patch (equal to
    H, W when they already are). Unlike v1 there is no concat-and-fuse with the input (dropped in v2
    for speed), and a map whose side is not a multiple of the patch is resized up before the block
    and not back, as CoreNet does (224 px input: the last map is 8x8, not 7x7).
    """

    def __init__(self, channels: int, dim: int, ffn_multiplier: float, depth: int, patch: tuple[int, int] = (2, 2),
                 dropout: float = 0.0, ffn_dropout: float = 0.0, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.patch = patch
        # CoreNet keeps FFN widths multiples of 16 by flooring.
        ffn_dim = int(ffn_multiplier * dim) // 16 * 16
        self.local_rep = nn.Sequential(ConvNormAct(channels, channels, 3, groups=channels),
                                       ConvNormAct(channels, dim, 1, norm=False, act=False))
        self.global_rep = nn.Sequential(*[LinearAttnFFN(dim, ffn_dim, dropout, ffn_dropout, attn_dropout)
                                          for _ in range(depth)], nn.GroupNorm(1, dim))
        self.conv_proj = ConvNormAct(dim, channels, 1, act=False)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.patch
        h, w = x.shape[-2:]
        size = (math.ceil(h / ph) * ph, math.ceil(w / pw) * pw)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        tokens = unfold_v2(self.local_rep(x), self.patch)
        tokens = run_global(self.global_rep, tokens, self.gradient_checkpointing and self.training)
        return self.conv_proj(fold_v2(tokens, self.patch, (size[0] // ph, size[1] // pw)))
