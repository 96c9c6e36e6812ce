"""Windowed attention: 1-D (optionally shifted, ByteFormer) and 2-D partition helpers (SAM ViT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from corefm.nn.attention import Attention, sdpa
from corefm.nn.embeddings import RotaryEmbedding
from corefm.nn.kv_cache import KVCache


class WindowedAttention(Attention):
    """Self-attention inside non-overlapping 1-D windows, Swin-style shift optional.

    Equivalent to full attention where token i attends token j iff both are valid and
    they fall in the same window of the grid whose boundaries sit at shift + n * window_size
    (so with a shift the first `shift` tokens form their own short window). The sequence
    is padded to a multiple of the window and rolled by -shift; the padding and the tokens
    that wrapped round from the start are masked, so attention never crosses the ends of
    the sequence. Parameters and names are those of Attention.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = False,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        rope: RotaryEmbedding | None = None,
        causal: bool = False,
        *,
        window_size: int,
        shift: int = 0,
    ) -> None:
        super().__init__(dim, num_heads, num_kv_heads, head_dim, bias, qk_norm, norm_eps, rope, causal)
        if window_size <= 0 or not 0 <= shift < window_size:
            raise ValueError(f"need window_size > 0 and 0 <= shift < window_size, got {window_size}, {shift}")
        self.window_size = window_size
        self.shift = shift

    def window_mask(self, valid: torch.Tensor) -> torch.Tensor:
        """valid: (B, L) bool, already padded and rolled -> (B * n, 1, w, w) bool."""
        w, s = self.window_size, self.shift
        b, length = valid.shape
        mask = rearrange(valid, "b (n w) -> b n 1 1 w", w=w)
        if s:
            # After rolling, the last s slots hold the first s tokens of the sequence;
            # they may only see each other, never the tail they now sit next to.
            wrapped = rearrange(torch.arange(length, device=valid.device) >= length - s, "(n w) -> n w", w=w)
            same_side = wrapped[:, :, None] == wrapped[:, None, :]  # (n, w, w)
            mask = mask & same_side[None, :, None]
        if self.causal:
            # Within a window rolled order equals original order for tokens that may interact.
            mask = mask & torch.ones(w, w, dtype=torch.bool, device=valid.device).tril()
        mask = mask.expand(b, length // w, 1, w, w)
        return rearrange(mask, "b n h q k -> (b n) h q k")

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
        """x: (B, T, D), key_padding_mask: (B, T) bool True = real token -> (B, T, D).

        positions feed RoPE if any (default arange(T)). attn_mask and kv_cache are not
        meaningful for windows and are rejected.
        """
        if attn_mask is not None or kv_cache is not None:
            raise ValueError("WindowedAttention takes no attn_mask or kv_cache; use key_padding_mask")
        b, t, _ = x.shape
        w, s = self.window_size, self.shift
        kpm = key_padding_mask
        if kpm is not None and (kpm.dtype != torch.bool or kpm.shape != (b, t)):
            raise ValueError(f"key_padding_mask must be bool ({b}, {t}), got {kpm.dtype} {tuple(kpm.shape)}")
        if self.rope is not None and positions is None:
            positions = torch.arange(t, device=x.device)
        q, k, v = self.project(x, positions)

        pad = (-t) % w
        valid = kpm if kpm is not None else torch.ones(b, t, dtype=torch.bool, device=x.device)
        if pad:
            q, k, v = (F.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
            valid = F.pad(valid, (0, pad), value=False)
        if s:
            q, k, v = (z.roll(-s, dims=2) for z in (q, k, v))
            valid = valid.roll(-s, dims=1)
        needs_mask = s or pad or self.causal or kpm is not None
        mask = self.window_mask(valid) if needs_mask else None
        q, k, v = (rearrange(z, "b h (n w) d -> (b n) h w d", w=w) for z in (q, k, v))
        out = sdpa(q, k, v, mask)
        out = rearrange(out, "(b n) h w d -> b h (n w) d", b=b)
        if s:
            out = out.roll(s, dims=2)
        return self.merge_heads(out[:, :, :t])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window_size={self.window_size}, shift={self.shift}"


def window_partition_2d(x: torch.Tensor, win: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """x: (B, H, W, C) -> windows (B * nH * nW, win, win, C) and the padded size (Hp, Wp).

    H and W are zero-padded at the bottom/right up to multiples of win (SAM's ViT layout).
    """
    if win <= 0:
        raise ValueError(f"window size must be positive, got {win}")
    h, w = x.shape[1:3]
    pad_h, pad_w = (-h) % win, (-w) % win
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    windows = rearrange(x, "b (nh wh) (nw ww) c -> (b nh nw) wh ww c", wh=win, ww=win)
    return windows, (h + pad_h, w + pad_w)


def window_unpartition_2d(
    windows: torch.Tensor, win: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """windows: (B * nH * nW, win, win, C) -> (B, H, W, C), dropping the padding added by partition."""
    hp, wp = pad_hw
    x = rearrange(windows, "(b nh nw) wh ww c -> b (nh wh) (nw ww) c", nh=hp // win, nw=wp // win)
    return x[:, : hw[0], : hw[1]].contiguous()
