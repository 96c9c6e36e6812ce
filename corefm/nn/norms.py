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


class _Float32BatchNorm:
    """BatchNorm that computes in float32 whatever its input and weight dtypes (mixed in as the first
    base of an ``nn.BatchNorm*d``). DeepSpeed's bf16 mode casts parameters but not buffers, so a plain
    BatchNorm meets bf16 input and weights beside fp32 running statistics and refuses; autocast runs
    batch norm in float32 for the same precision reason. The output is cast back to the input dtype;
    state-dict names are BatchNorm's own, so torchvision / CoreNet / timm weights load unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            # momentum None means a cumulative moving average, as nn.BatchNorm
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or self.running_mean is None
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        running = not self.training or self.track_running_stats
        out = F.batch_norm(x.float(), self.running_mean if running else None, self.running_var if running else None,
                           weight, bias, use_batch_stats, momentum, self.eps)
        return out.to(x.dtype)


class BatchNorm1d(_Float32BatchNorm, nn.BatchNorm1d):
    """nn.BatchNorm1d computed in float32 (see _Float32BatchNorm); x: (B, C) or (B, C, L)."""


class BatchNorm2d(_Float32BatchNorm, nn.BatchNorm2d):
    """nn.BatchNorm2d computed in float32 (see _Float32BatchNorm); x: (B, C, H, W)."""


def build_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """Return a norm over the last dimension; kind is "rms_norm" or "layer_norm"."""
    if kind == "rms_norm":
        return RMSNorm(dim, eps=eps)
    if kind == "layer_norm":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"unknown norm kind {kind!r}; valid kinds: {', '.join(NORM_KINDS)}")
