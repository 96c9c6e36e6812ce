"""Decoder-only language model with per-layer widths (OpenELM's layer-wise scaling)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from corefm.nn.block import TransformerBlock
from corefm.nn.kernels import Linear, decoding_weights, linear
from corefm.nn.embeddings import RotaryEmbedding
from corefm.nn.kv_cache import KVCache
from corefm.nn.norms import build_norm


@dataclass(frozen=True)
class LayerSpec:
    """Shape of one decoder layer: attention heads and FFN hidden width."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_dim: int

    @classmethod
    def coerce(cls, spec: LayerSpec | Mapping[str, int]) -> LayerSpec:
        if isinstance(spec, LayerSpec):
            return spec
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(spec, Mapping) or set(spec) != fields:
            raise ValueError(f"a layer spec needs exactly the keys {sorted(fields)}, got {spec!r}")
        return cls(**{k: int(v) for k, v in spec.items()})


class DecoderLM(nn.Module):
    """token_embeddings -> layers.{i} (pre-norm, causal, RoPE) -> norm -> lm_head / tied embeddings.

    The names are OpenELM's under `transformer.` (token_embeddings, layers.{i}.attn.qkv_proj,
    .attn.q_norm, .attn.k_norm, .attn.out_proj, .ffn.proj_1, .ffn.proj_2, .attn_norm,
    .ffn_norm, norm); `lm_head` exists only when embeddings are untied.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        layer_specs: Sequence[LayerSpec | Mapping[str, int]],
        norm: str = "rms_norm",
        norm_eps: float = 1e-6,
        qk_norm: bool = True,
        rope_theta: float = 10000.0,
        max_len: int = 2048,
        tie_embeddings: bool = True,
        bias: bool = False,
        mlp: str = "swiglu",
    ) -> None:
        super().__init__()
        specs = [LayerSpec.coerce(s) for s in layer_specs]
        if not specs:
            raise ValueError("layer_specs must name at least one layer")
        self.vocab_size = vocab_size
        self.dim = dim
        self.layer_specs = specs
        self.max_len = max_len
        self.token_embeddings = nn.Embedding(vocab_size, dim)
        # One rotary table per distinct head_dim, shared by the layers (it holds no parameters).
        ropes = {hd: RotaryEmbedding(hd, rope_theta, max_len) for hd in sorted({s.head_dim for s in specs})}
        self.layers = nn.ModuleList(
            TransformerBlock(
                dim,
                s.num_heads,
                s.ffn_dim,
                num_kv_heads=s.num_kv_heads,
                head_dim=s.head_dim,
                mlp=mlp,
                norm=norm,
                norm_eps=norm_eps,
                bias=bias,
                qk_norm=qk_norm,
                rope=ropes[s.head_dim],
                causal=True,
            )
            for s in specs
        )
        self.norm = build_norm(norm, dim, norm_eps)
        self.lm_head = None if tie_embeddings else Linear(dim, vocab_size, bias=False)
        self.gradient_checkpointing = False

    def new_kv_cache(self) -> KVCache:
        """An empty cache sized for this model's layers."""
        return KVCache(num_layers=len(self.layers))

    def decoding(self) -> AbstractContextManager[None]:
        """Context for incremental decoding: the linear kernels chosen in corefm.nn.kernels (``auto`` on a
        CPU: bf16 and fp32 weights from oneDNN-packed copies, bit-identical logits in bf16)."""
        return decoding_weights(self, [] if self.lm_head is not None else [self.token_embeddings.weight])

    def forward_hidden(
        self,
        input_ids: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids: (B, T) long -> final-norm hidden states (B, T, dim).

        positions: (T,) or (B, T); default kv_cache.seq_len + arange(T).
        key_padding_mask: (B, past + T) bool, True = real token (covers cached tokens too).
        """
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        past = kv_cache.seq_len if kv_cache is not None else 0
        if positions is None:
            positions = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)
        x = self.token_embeddings(input_ids)
        # Recomputing a block that appends to a KV cache would append twice, so
        # checkpointing is only used for cache-free training passes.
        use_ckpt = self.gradient_checkpointing and self.training and kv_cache is None
        for i, layer in enumerate(self.layers):
            kwargs = dict(key_padding_mask=key_padding_mask, positions=positions, kv_cache=kv_cache, layer_idx=i)
            x = checkpoint(layer, x, use_reentrant=False, **kwargs) if use_ckpt else layer(x, **kwargs)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, T, dim) -> (B, T, vocab_size)."""
        if self.lm_head is not None:
            return self.lm_head(hidden)
        return linear(hidden, self.token_embeddings.weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids: (B, T) long -> logits (B, T, vocab_size); see forward_hidden for the options."""
        hidden = self.forward_hidden(
            input_ids, positions=positions, kv_cache=kv_cache, key_padding_mask=key_padding_mask
        )
        return self.logits(hidden)
