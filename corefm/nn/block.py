"""Pre-norm transformer block shared by every tower: x + attn(norm(x)), x + ffn(norm(x))."""

from __future__ import annotations

import torch
from torch import nn

from corefm.nn.attention import Attention
from corefm.nn.embeddings import RotaryEmbedding
from corefm.nn.kv_cache import KVCache
from corefm.nn.mlp import build_mlp
from corefm.nn.norms import build_norm
from corefm.nn.window import WindowedAttention


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT). x: (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TransformerBlock(nn.Module):
    """Pre-norm block. Names `attn_norm`, `attn`, `ffn_norm`, `ffn` follow OpenELM checkpoints.

    window_size turns the attention into WindowedAttention (shift = window_shift);
    layer_scale (an init value such as 1e-5) adds `ls_attn` / `ls_ffn` on the residual branches.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        mlp: str = "gelu",
        norm: str = "layer_norm",
        norm_eps: float = 1e-5,
        bias: bool = True,
        qk_norm: bool = False,
        rope: RotaryEmbedding | None = None,
        causal: bool = False,
        window_size: int | None = None,
        window_shift: int = 0,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        attn_args = dict(
            dim=dim,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            bias=bias,
            qk_norm=qk_norm,
            norm_eps=norm_eps,
            rope=rope,
            causal=causal,
        )
        if window_size is None:
            if window_shift:
                raise ValueError("window_shift needs window_size")
            self.attn: Attention = Attention(**attn_args)
        else:
            self.attn = WindowedAttention(**attn_args, window_size=window_size, shift=window_shift)
        self.attn_norm = build_norm(norm, dim, norm_eps)
        self.ffn_norm = build_norm(norm, dim, norm_eps)
        self.ffn = build_mlp(mlp, dim, ffn_dim, bias)
        self.ls_attn = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.ls_ffn = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        *,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        layer_idx: int | None = None,
    ) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D); keyword arguments as in Attention.forward."""
        h = self.attn(
            self.attn_norm(x),
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            positions=positions,
            kv_cache=kv_cache,
            layer_idx=layer_idx,
        )
        x = x + self.ls_attn(h)
        return x + self.ls_ffn(self.ffn(self.ffn_norm(x)))
