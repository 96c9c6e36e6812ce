"""Multi-head / grouped-query self-attention on top of torch's SDPA.

Mask convention everywhere in corefm.nn: boolean, True = keep / attend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from corefm.nn.embeddings import RotaryEmbedding
from corefm.nn.kernels import Linear, unmasked_attention
from corefm.nn.kv_cache import KVCache
from corefm.nn.norms import RMSNorm


def build_attention_mask(
    q_len: int,
    kv_len: int,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Combine masks into one bool (B|1, 1|H, q_len, kv_len) tensor, or None if nothing is masked.

    The queries are taken to be the last q_len of the kv_len positions (the cache holds
    the first kv_len - q_len), so query i sits at absolute position kv_len - q_len + i
    and, when causal, attends keys j <= kv_len - q_len + i.
    key_padding_mask: (B, kv_len), attn_mask: (q_len, kv_len) or (B|1, 1|H, q_len, kv_len).
    """
    mask = None
    if key_padding_mask is not None:
        kpm = key_padding_mask
        if kpm.dtype != torch.bool or kpm.ndim != 2 or kpm.shape[1] != kv_len:
            raise ValueError(f"key_padding_mask must be bool (B, {kv_len}), got {kpm.dtype} {tuple(kpm.shape)}")
        mask = key_padding_mask[:, None, None, :]
        device = key_padding_mask.device
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool or attn_mask.ndim not in (2, 4) or attn_mask.shape[-2:] != (q_len, kv_len):
            raise ValueError(
                f"attn_mask must be bool ({q_len}, {kv_len}) or (B, 1, {q_len}, {kv_len}), "
                f"got {attn_mask.dtype} {tuple(attn_mask.shape)}"
            )
        extra = attn_mask[None, None] if attn_mask.ndim == 2 else attn_mask
        mask = extra if mask is None else mask & extra
        device = attn_mask.device
    if causal and q_len > 1:
        past = kv_len - q_len
        tril = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(diagonal=past)
        mask = tril[None, None] if mask is None else mask & tril
    return mask


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention with GQA and safe fully-masked rows.

    q: (B, Hq, T, hd), k/v: (B, Hk, S, hd) with Hq % Hk == 0, mask: bool broadcastable to
    (B, Hq, T, S) -> (B, Hq, T, hd). Query head h uses KV head h // (Hq / Hk), as in
    OpenELM/LLaMA. A query row whose keys are all masked returns zeros (not NaN).
    is_causal (without a mask) is for T == S, query i attending keys j <= i.
    """
    n_rep = q.shape[1] // k.shape[1]
    if mask is None:
        # The kernel (SDPA, or a CPU kernel where it is faster) is chosen per device in corefm.nn.kernels.
        return unmasked_attention(q, k, v, is_causal)
    if is_causal:
        raise ValueError("pass either an explicit mask or is_causal=True, not both")
    if n_rep > 1:
        # Masked SDPA with enable_gqa falls back to the slow math kernel on GPU; expanding
        # keeps the memory-efficient kernel available.
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    row_ok = mask.any(dim=-1, keepdim=True)
    # Letting empty rows attend everything keeps softmax (and its backward) finite;
    # their output is then zeroed, so the choice of keys never shows.
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~row_ok)
    return out.masked_fill(~row_ok, 0.0)


class Attention(nn.Module):
    """Self-attention: fused qkv_proj -> split -> q/k RMSNorm -> RoPE -> KV cache -> SDPA -> out_proj.

    qkv_proj has (num_heads + 2 * num_kv_heads) * head_dim outputs ordered
    [q heads | k heads | v heads], each head contiguous: OpenELM's checkpoint layout
    (and, with num_kv_heads == num_heads, nn.MultiheadAttention's in_proj layout).
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
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads <= 0 or num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})")
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim ({dim}) is not divisible by num_heads ({num_heads}); pass head_dim")
            head_dim = dim // num_heads
        if rope is not None and rope.head_dim != head_dim:
            raise ValueError(f"rope.head_dim ({rope.head_dim}) != attention head_dim ({head_dim})")
        self.dim = dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.causal = causal
        self.qkv_proj = Linear(dim, (num_heads + 2 * num_kv_heads) * head_dim, bias=bias)
        self.q_norm = RMSNorm(head_dim, eps=norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, eps=norm_eps) if qk_norm else None
        self.rope = rope
        self.out_proj = Linear(num_heads * head_dim, dim, bias=bias)

    def project(
        self, x: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, T, D) -> q: (B, Hq, T, hd), k, v: (B, Hk, T, hd); q/k normalised, and rotated when
        positions ((T,) or (B, T)) are given and the layer has RoPE.

        q and k are adjacent heads of the fused projection, so their norms and rotation run as one
        op over (B, Hq + Hk, T, hd) rather than two: at decoder sizes on a CPU these small
        element-wise passes cost as much time as their launches.
        """
        nq, nk = self.num_heads, self.num_kv_heads
        qkv = rearrange(self.qkv_proj(x), "b t (h d) -> b h t d", d=self.head_dim)
        qk, v = qkv.split([nq + nk, nk], dim=1)
        if self.q_norm is not None:
            weight = torch.cat((self.q_norm.weight.expand(nq, -1), self.k_norm.weight.expand(nk, -1)))
            qk = F.rms_norm(qk, (self.head_dim,), None, self.q_norm.eps) * weight[:, None]
        if self.rope is not None and positions is not None:
            qk = self.rope.rotate(qk, positions)
        q, k = qk.split([nq, nk], dim=1)
        return q, k, v

    def merge_heads(self, out: torch.Tensor) -> torch.Tensor:
        """out: (B, Hq, T, hd) -> (B, T, D)."""
        return self.out_proj(rearrange(out, "b h t d -> b t (h d)"))

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
        """x: (B, T, D) -> (B, T, D).

        key_padding_mask: (B, T_kv) bool, True = real token; with a cache T_kv counts the
            cached positions too (T_kv = kv_cache.layer_len(layer_idx) + T).
        attn_mask: (T, T_kv) or (B, 1, T, T_kv) bool, True = may attend; ANDed with the rest.
        positions: (T,) or (B, T) long positions for RoPE; default past + arange(T).
        kv_cache / layer_idx: incremental decoding; k, v are appended after RoPE.
        """
        t = x.shape[1]
        past = 0
        if kv_cache is not None:
            if layer_idx is None:
                raise ValueError("layer_idx is required when a kv_cache is given")
            past = kv_cache.layer_len(layer_idx)
        if self.rope is not None and positions is None:
            positions = torch.arange(past, past + t, device=x.device)
        q, k, v = self.project(x, positions)
        if kv_cache is not None:
            k, v = kv_cache.append(layer_idx, k, v)
        t_kv = k.shape[-2]
        if self.causal and t == t_kv and key_padding_mask is None and attn_mask is None:
            out = sdpa(q, k, v, is_causal=True)
        else:
            mask = build_attention_mask(
                t, t_kv, causal=self.causal, key_padding_mask=key_padding_mask, attn_mask=attn_mask, device=x.device
            )
            out = sdpa(q, k, v, mask)
        return self.merge_heads(out)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, causal={self.causal}"
