"""Causal text tower for CLIP (open_clip-compatible shapes)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from corefm.nn.block import TransformerBlock
from corefm.nn.embeddings import LearnedPositions
from corefm.nn.norms import build_norm
from corefm.nn.pooling import eot_pool


class TextTransformer(nn.Module):
    """Token embedding -> learned positions -> causal blocks -> ln_final -> EOT pool -> proj.

    open_clip's default text tower: vocab_size=49408, context_length=77, width=512,
    layers=12, heads=8, output_dim=512. EOT pooling takes the position of the largest
    token id per row, which is the end-of-text token in CLIP's tokenizer.
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        output_dim: int | None = None,
        norm: str = "layer_norm",
        norm_eps: float = 1e-5,
        mlp: str = "gelu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.width = width
        self.output_dim = output_dim or width
        self.token_embeddings = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.token_embeddings.weight, std=0.02)
        self.positions = LearnedPositions(context_length, width, init_std=0.01)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                width, heads, int(width * mlp_ratio), mlp=mlp, norm=norm, norm_eps=norm_eps, bias=bias, causal=True
            )
            for _ in range(layers)
        )
        self.ln_final = build_norm(norm, width, norm_eps)
        self.proj = nn.Linear(width, output_dim, bias=False) if output_dim is not None else None
        self.gradient_checkpointing = False

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) long, T <= context_length -> features of every token (B, T, width)."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (B, T), got shape {tuple(tokens.shape)}")
        x = self.positions(self.token_embeddings(tokens))
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.ln_final(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) long -> pooled text embedding (B, output_dim)."""
        pooled = eot_pool(self.forward_tokens(tokens), tokens)
        return self.proj(pooled) if self.proj is not None else pooled
