"""ByteFormer token merging: halve the sequence by fusing adjacent token pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class TokenMerge(nn.Module):
    """Concat tokens (2i, 2i+1) -> Linear(2C -> C) -> LayerNorm.

    x: (B, T, C), key_padding_mask: (B, T) bool True = real token
    -> (B, ceil(T / 2), C) and the merged mask (B, ceil(T / 2)).
    A merged token is valid if either of its inputs was. Padded inputs are zeroed before
    the merge, so a half-padded pair depends only on its real token and whatever the
    padding held never leaks into the result. An odd T gets one padded (invalid) token.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, _ = x.shape
        if key_padding_mask is not None:
            kpm = key_padding_mask
            if kpm.dtype != torch.bool or kpm.shape != (b, t):
                raise ValueError(f"key_padding_mask must be bool ({b}, {t}), got {kpm.dtype} {tuple(kpm.shape)}")
            x = x.masked_fill(~key_padding_mask.unsqueeze(-1), 0.0)
        if t % 2:
            x = F.pad(x, (0, 0, 0, 1))
            if key_padding_mask is None:
                # The added token is padding even if the input had none.
                key_padding_mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
            key_padding_mask = F.pad(key_padding_mask, (0, 1), value=False)
        x = self.norm(self.proj(rearrange(x, "b (t two) c -> b t (two c)", two=2)))
        if key_padding_mask is not None:
            key_padding_mask = rearrange(key_padding_mask, "b (t two) -> b t two", two=2).any(dim=-1)
        return x, key_padding_mask
