"""Input embeddings: image patches, learned absolute positions, rotary positions."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with one strided Conv2d.

    images: (B, C, H, W) -> (B, N, D), N = (H / p) * (W / p), row-major over the grid.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        in_chans: int,
        dim: int,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.image_size = _pair(image_size)
        self.patch_size = _pair(patch_size)
        if any(s % p for s, p in zip(self.image_size, self.patch_size)):
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        self.grid_size = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        if h % self.patch_size[0] or w % self.patch_size[1]:
            # A strided conv would silently drop the border; that is never what is wanted.
            raise ValueError(f"image size {(h, w)} is not a multiple of patch_size {self.patch_size}")
        return rearrange(self.proj(images), "b d h w -> b (h w) d")


class LearnedPositions(nn.Module):
    """Adds a learned table of absolute positions.

    x: (B, T, D) with offset + T <= num_positions -> (B, T, D). Shorter sequences use
    the first rows of the table (offset shifts the start, e.g. for a text suffix).
    """

    def __init__(self, num_positions: int, dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.num_positions = num_positions
        self.weight = nn.Parameter(torch.randn(num_positions, dim) * init_std)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        t = x.shape[1]
        if offset + t > self.num_positions:
            raise ValueError(f"sequence of {offset + t} positions exceeds the table of {self.num_positions}")
        return x + self.weight[offset : offset + t].to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the halves of the last dim (LLaMA/OpenELM convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q: (B, Hq, T, hd) and k: (B, Hk, T, hd) by cos/sin broadcastable to (B, 1, T, hd).

    The rotation is done in float32 (cos/sin are float32) and cast back, so bf16
    training does not round the angle of far positions.
    """
    qf, kf = q.float(), k.float()
    q_out = qf * cos + rotate_half(qf) * sin
    k_out = kf * cos + rotate_half(kf) * sin
    return q_out.type_as(q), k_out.type_as(k)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with lazily grown float32 cos/sin tables.

    The tables are plain attributes kept per device, not buffers: a buffer would be cast
    by a blanket model.to(bf16) (bf16 angles are visibly wrong beyond a few hundred
    positions) and left as uninitialised memory by meta-device init + to_empty().
    They are built on first use on a device and grown (doubling) when a later position
    is asked for, so they never appear in state_dict.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, max_len: int = 2048) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary head_dim must be even, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta
        self.max_len = max_len
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        # The last positions tensor and its cos/sin: a decoder passes one positions tensor to all of
        # its layers, so the lookup (a host sync for the table size and two gathers) runs once per
        # forward instead of once per layer, which matters when decoding one token at a time.
        self._last: tuple[torch.Tensor, int, torch.Tensor, torch.Tensor] | None = None

    def _build(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        exponent = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32) / self.head_dim
        inv_freq = 1.0 / (self.theta**exponent)
        t = torch.arange(length, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # (length, hd), halves share frequencies
        return emb.cos(), emb.sin()

    def table(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: (L, hd) float32 on device with L >= length."""
        cached = self._tables.get(device)
        if cached is None or cached[0].shape[0] < length:
            size = max(self.max_len, cached[0].shape[0] if cached is not None else 0, 1)
            while size < length:
                size *= 2
            cached = self._tables[device] = self._build(size, device)
        return cached

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: (T,) or (B, T) long -> cos, sin: (1, 1, T, hd) or (B, 1, T, hd) float32."""
        last = self._last
        if last is not None and last[0] is positions and last[1] == positions._version:
            return last[2], last[3]
        if positions.ndim not in (1, 2):
            raise ValueError(f"positions must be (T,) or (B, T), got shape {tuple(positions.shape)}")
        if positions.device.type == "cpu":
            need = int(positions.max()) + 1 if positions.numel() else 0
        else:
            # Reading the largest position would be a host sync in every forward; on an accelerator the
            # table covers max(max_len, T) positions, and a larger one fails loudly (an index assert).
            need = positions.shape[-1]
        cos, sin = self.table(need, positions.device)
        cos, sin = cos[positions], sin[positions]
        cos, sin = (cos[None, None], sin[None, None]) if positions.ndim == 1 else (cos[:, None], sin[:, None])
        self._last = (positions, positions._version, cos, sin)
        return cos, sin

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, H, T, hd) -> x rotated by positions ((T,) or (B, T)), computed in float32."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"rotary head_dim is {self.head_dim}, got {x.shape[-1]}")
        cos, sin = self.cos_sin(positions)
        xf = x.float()
        return (xf * cos + rotate_half(xf) * sin).type_as(x)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: (B, Hq, T, hd), k: (B, Hk, T, hd), positions: (T,) or (B, T); default arange(T)."""
        if q.shape[-1] != self.head_dim or k.shape[-1] != self.head_dim:
            raise ValueError(f"rotary head_dim is {self.head_dim}, got q/k with {q.shape[-1]}/{k.shape[-1]}")
        if positions is None:
            positions = torch.arange(q.shape[-2], device=q.device)
        cos, sin = self.cos_sin(positions)
        return apply_rotary(q, k, cos, sin)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}, max_len={self.max_len}"
