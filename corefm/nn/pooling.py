"""Sequence pooling: (B, T, D) -> (B, D). Masks are bool, True = real token."""

from __future__ import annotations

import torch


def _check_mask(x: torch.Tensor, mask: torch.Tensor) -> None:
    if mask.dtype != torch.bool or mask.shape != x.shape[:2]:
        raise ValueError(f"mask must be bool {tuple(x.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over valid tokens. x: (B, T, D), mask: (B, T) -> (B, D); an all-masked row gives zeros."""
    if mask is None:
        return x.mean(dim=1)
    _check_mask(x, mask)
    m = mask.unsqueeze(-1).to(x.dtype)
    # masked_fill rather than x * m: padded positions may hold inf/NaN garbage.
    total = x.masked_fill(~mask.unsqueeze(-1), 0.0).sum(dim=1)
    return total / m.sum(dim=1).clamp(min=1.0)


def max_pool(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Max over valid tokens. x: (B, T, D), mask: (B, T) -> (B, D); an all-masked row gives zeros."""
    if mask is None:
        return x.amax(dim=1)
    _check_mask(x, mask)
    out = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    return out.masked_fill(~mask.any(dim=1, keepdim=True), 0.0)


def cls_pool(x: torch.Tensor) -> torch.Tensor:
    """First token (class token). x: (B, T, D) -> (B, D)."""
    return x[:, 0]


def eot_pool(x: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Token at the position of the largest id in each row (open_clip's end-of-text pick).

    x: (B, T, D), token_ids: (B, T) long -> (B, D). Works because the EOT id is the
    largest in CLIP's vocabulary; argmax returns the first such position.
    """
    if token_ids.shape != x.shape[:2]:
        raise ValueError(f"token_ids must be {tuple(x.shape[:2])}, got {tuple(token_ids.shape)}")
    idx = token_ids.argmax(dim=-1)
    return x[torch.arange(x.shape[0], device=x.device), idx]
