"""Normalization layers: RMSNorm and a small factory shared by every tower."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORM_KINDS = ("rms_norm", "layer_norm")


class RMSNorm(nn.Module):
    """Root-mean-square norm (no mean subtraction, no bias).

    x: (..., dim) -> (..., dim). The statistic is taken in float32 so bf16/fp16
    activations do not lose precision in the mean of squares; the result is cast
    back to the input dtype before the weight is applied (as OpenELM does), so the
    module behaves the same as the released checkpoints.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.dim,), None, self.eps) * self.weight

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def build_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """Return a norm over the last dimension; kind is "rms_norm" or "layer_norm"."""
    if kind == "rms_norm":
        return RMSNorm(dim, eps=eps)
    if kind == "layer_norm":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"unknown norm kind {kind!r}; valid kinds: {', '.join(NORM_KINDS)}")
