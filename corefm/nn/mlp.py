"""Feed-forward blocks: SwiGLU (OpenELM layout) and the classic GELU MLP (CLIP/ViT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from corefm.nn.kernels import Linear

MLP_KINDS = ("swiglu", "gelu", "quick_gelu")


class SwiGLU(nn.Module):
    """silu(gate) * up, then project back.

    x: (..., dim) -> (..., dim). The gate and up projections are fused into one
    Linear named `proj_1` whose output is [gate | up] along the last dim, and the
    down projection is `proj_2`: the exact names and layout of OpenELM checkpoints
    (`ffn.proj_1`, `ffn.proj_2`), so released weights load without reshuffling.
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.proj_1 = Linear(dim, 2 * hidden_dim, bias=bias)
        self.proj_2 = Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.proj_1(x).chunk(2, dim=-1)
        return self.proj_2(F.silu(gate) * up)


class GELUMLP(nn.Module):
    """fc1 -> GELU -> fc2. x: (..., dim) -> (..., dim).

    act="quick_gelu" is x * sigmoid(1.702 x), which OpenAI's CLIP weights were
    trained with; loading them with exact GELU silently costs accuracy.
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True, act: str = "gelu") -> None:
        super().__init__()
        if act not in ("gelu", "quick_gelu"):
            raise ValueError(f"unknown GELU variant {act!r}; valid: gelu, quick_gelu")
        self.act = act
        self.fc1 = Linear(dim, hidden_dim, bias=bias)
        self.fc2 = Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = h * torch.sigmoid(1.702 * h) if self.act == "quick_gelu" else F.gelu(h)
        return self.fc2(h)


def build_mlp(kind: str, dim: int, hidden_dim: int, bias: bool) -> nn.Module:
    """kind: "swiglu" (hidden_dim is the gate/up width), "gelu" or "quick_gelu"."""
    if kind == "swiglu":
        return SwiGLU(dim, hidden_dim, bias=bias)
    if kind in ("gelu", "quick_gelu"):
        return GELUMLP(dim, hidden_dim, bias=bias, act=kind)
    raise ValueError(f"unknown mlp kind {kind!r}; valid kinds: {', '.join(MLP_KINDS)}")
