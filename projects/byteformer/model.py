"""ByteFormer (arXiv 2306.00238): a transformer over the raw bytes of a file.

bytes (B, L) in 0..255, PAD = 256 on the right
  -> Embedding(257, C, padding_idx=256)          (B, L, C)
  -> Conv1d(C, C, kernel k, stride k/2, no bias) (B, T, C), T = ceil(L / (k/2))
  -> + learned positions
  -> 12 pre-norm blocks, windowed attention (window 128, shift 0 / 64 alternating);
     after layers 0, 1, 3, 5, 7, 9: TokenMerge (pairs -> Linear 2C->C -> LayerNorm), T -> ceil(T/2)
  -> LayerNorm -> masked mean over real tokens -> Linear -> logits (B, num_classes)

Padding is masked end to end, so a sample's logits do not depend on how far it is padded:
* padded bytes embed to exact zeros (masked_fill, not just padding_idx's zero row, so loaded
  weights with a non-zero row cannot leak either);
* the sequence is right-padded to ceil(L / s) windows of the conv, so every conv window holding
  a real byte exists whatever L is; conv output j is real iff j * s < length (it then holds at
  least one real byte, and the zero padding adds nothing since the conv has no bias);
* attention takes that mask as key_padding_mask; the windows sit at fixed positions from the
  start of the sequence, so padding never moves a real token to another window;
* TokenMerge zeroes padded tokens before fusing a pair and ORs the pair's mask;
* pooling averages real tokens only.
(CoreNet's version fills the mask of a copy, so its padding is attended: not repeated here.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from corefm.errors import ConfigError
from corefm.nn import LearnedPositions, TokenMerge, TransformerBlock, masked_mean
from corefm.registry import register_model

PAD = 256  # byte values are 0..255; 256 is the padding token
# The DeiT sizes the paper uses (ByteFormer-Ti/S/B): a recipe's `model: {name: byteformer, preset: small}`.
PRESETS = {"tiny": dict(dim=192, heads=3, ffn_dim=768), "small": dict(dim=384, heads=6, ffn_dim=1536),
           "base": dict(dim=768, heads=12, ffn_dim=3072)}


@dataclass
class ByteFormerConfig:
    # Defaults: ByteFormer-Ti (DeiT-Ti widths; presets small and base for the others).
    dim: int = 192
    heads: int = 3
    ffn_dim: int = 768
    layers: int = 12
    window_size: int = 128
    # Odd layers shift their windows by window_size // 2 (Swin-style), even layers do not.
    shifted_windows: bool = True
    # Token merging (halving the sequence) after these layer indices.
    merge_after: list[int] = field(default_factory=lambda: [0, 1, 3, 5, 7, 9])
    # Conv1D kernel k over byte embeddings; the stride is k // 2 (paper: 32 for images and WAV).
    kernel_size: int = 32
    # Longest input in bytes; sizes the position table (ceil(max_bytes / stride) rows).
    max_bytes: int = 65536
    num_classes: int = 10
    # Initialisation: "corenet" (the paper's recipes: see ByteFormer.reset_parameters) or "torch"
    # (PyTorch's module defaults, which the short CPU demos learn faster from: README).
    init: Literal["corenet", "torch"] = "corenet"

    def __post_init__(self) -> None:
        if min(self.dim, self.heads, self.ffn_dim, self.layers) < 1:
            raise ConfigError("model.dim, model.heads, model.ffn_dim and model.layers must be positive")
        if self.kernel_size < 2 or self.kernel_size % 2:
            raise ConfigError(f"model.kernel_size must be even and >= 2 (stride is k/2), got {self.kernel_size}")
        if self.dim % self.heads:
            raise ConfigError(f"model.dim ({self.dim}) must be divisible by model.heads ({self.heads})")
        if self.window_size < 2 and self.shifted_windows:
            raise ConfigError("model.window_size must be >= 2 for shifted windows")
        bad = [i for i in self.merge_after if not 0 <= i < self.layers]
        if bad:
            raise ConfigError(f"model.merge_after: layer(s) {bad} outside 0..{self.layers - 1}")
        if self.max_bytes < 1 or self.num_classes < 1:
            raise ConfigError("model.max_bytes and model.num_classes must be positive")

    @property
    def stride(self) -> int:
        return self.kernel_size // 2


def conv_tokens(num_bytes: int, stride: int) -> int:
    """Tokens after the Conv1D for num_bytes bytes: one per stride started, at least one."""
    return max(1, math.ceil(num_bytes / stride))


class ByteFormer(nn.Module):
    """Raw-byte classifier. See the module docstring for the layer order and the masking rules."""

    def __init__(self, cfg: ByteFormerConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes  # read by the task to check labels
        self.max_bytes = cfg.max_bytes  # read by the task: inputs are cut to fit the position table
        c = cfg.dim
        self.embed = nn.Embedding(PAD + 1, c, padding_idx=PAD)
        self.conv = nn.Conv1d(c, c, kernel_size=cfg.kernel_size, stride=cfg.stride, bias=False)
        self.pos = LearnedPositions(conv_tokens(cfg.max_bytes, cfg.stride), c)
        shift = cfg.window_size // 2 if cfg.shifted_windows else 0
        self.blocks = nn.ModuleList(
            TransformerBlock(c, cfg.heads, cfg.ffn_dim, window_size=cfg.window_size,
                             window_shift=shift if i % 2 else 0)
            for i in range(cfg.layers)
        )
        self.merges = nn.ModuleDict({str(i): TokenMerge(c) for i in sorted(set(cfg.merge_after))})
        self.norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, cfg.num_classes)
        if cfg.init == "corenet":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """CoreNet's ByteFormer initialisation (its ImageNet recipes): byte embeddings and learned
        positions truncated normal with std C^-0.5 (the padding row stays zero), every Linear
        truncated normal with std 0.02 and zero bias; LayerNorms at 1 / 0. The Conv1d keeps PyTorch's
        default, as in CoreNet, whose initialiser covers 2-D and 3-D convolutions only."""
        std = self.cfg.dim ** -0.5
        nn.init.trunc_normal_(self.embed.weight[:PAD], std=std)
        self.embed.weight[PAD].zero_()
        nn.init.trunc_normal_(self.pos.weight, std=std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def embed_bytes(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, L) long, lengths: (B,) -> conv tokens (B, T, C) and their mask (B, T) bool."""
        b, length = tokens.shape
        s, k = self.cfg.stride, self.cfg.kernel_size
        t = conv_tokens(length, s)
        if t > self.pos.num_positions:
            raise ValueError(f"{length} bytes exceed the model's max_bytes ({self.cfg.max_bytes})")
        total = (t - 1) * s + k  # enough bytes for t full conv windows
        tokens = F.pad(tokens, (0, total - length), value=PAD)
        real = torch.arange(total, device=tokens.device)[None] < lengths[:, None]  # (B, total)
        x = self.embed(tokens.masked_fill(~real, PAD)).masked_fill(~real[..., None], 0.0)
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, t, C)
        mask = torch.arange(t, device=tokens.device)[None] * s < lengths[:, None]
        return self.pos(x), mask

    def forward_features(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: (B, L) long, right-padded with PAD; lengths: (B,) real bytes per row
        (default: the count of non-PAD bytes) -> pooled features (B, C)."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (B, L), got shape {tuple(tokens.shape)}")
        if lengths is None:
            lengths = (tokens != PAD).sum(dim=1)
        x, mask = self.embed_bytes(tokens.long(), lengths.to(tokens.device))
        for i, block in enumerate(self.blocks):
            x = block(x, key_padding_mask=mask)
            merge = self.merges[str(i)] if str(i) in self.merges else None
            if merge is not None:
                x, mask = merge(x, mask)
        return masked_mean(self.norm(x), mask)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: (B, L) long in 0..256 (256 = PAD), lengths: (B,) -> logits (B, num_classes)."""
        return self.head(self.forward_features(tokens, lengths))


@register_model("byteformer", ByteFormerConfig, presets=PRESETS)
def build_byteformer(cfg: ByteFormerConfig) -> nn.Module:
    return ByteFormer(cfg)
