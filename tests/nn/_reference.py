"""Naive references for tests/nn: explicit loops and formulas, no SDPA, no einops."""

from __future__ import annotations

import math

import torch


def naive_rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """x: (B, H, T, hd); positions: (T,) or (B, T). Rotate pairs (x[i], x[i + hd/2]) as complex numbers."""
    hd = x.shape[-1]
    half = hd // 2
    pos = positions if positions.ndim == 2 else positions[None].expand(x.shape[0], -1)
    out = torch.empty_like(x, dtype=torch.float64)
    for b in range(x.shape[0]):
        for t in range(x.shape[2]):
            p = float(pos[b, t])
            for i in range(half):
                angle = p * theta ** (-2.0 * i / hd)
                rot = complex(math.cos(angle), math.sin(angle))
                z = torch.complex(x[b, :, t, i].double(), x[b, :, t, i + half].double()) * rot
                out[b, :, t, i] = z.real
                out[b, :, t, i + half] = z.imag
    return out.to(x.dtype)


def naive_rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """q: (B, Hq, T, hd), k/v: (B, Hk, S, hd), allowed: (B, T, S) bool.

    Explicit softmax(q k^T / sqrt(hd)) v per head; query head h reads KV head h // (Hq / Hk).
    Rows with no allowed key give zeros.
    """
    b_sz, hq, t, hd = q.shape
    rep = hq // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(b_sz):
        for h in range(hq):
            kh, vh = k[b, h // rep], v[b, h // rep]
            scores = q[b, h] @ kh.T / math.sqrt(hd)
            scores = scores.masked_fill(~allowed[b], float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            probs = torch.where(allowed[b].any(-1, keepdim=True), probs, torch.zeros_like(probs))
            out[b, h] = probs @ vh
    return out


def naive_self_attention(attn, x: torch.Tensor, allowed: torch.Tensor, positions: torch.Tensor | None = None):
    """Full forward of a corefm Attention module from its weights, by hand. x: (B, T, D) -> (B, T, D)."""
    b_sz, t, _ = x.shape
    hq, hk, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
    w = attn.qkv_proj.weight
    bias = attn.qkv_proj.bias
    qkv = x @ w.T + (bias if bias is not None else 0)
    q = qkv[..., : hq * hd].reshape(b_sz, t, hq, hd).transpose(1, 2)
    k = qkv[..., hq * hd : (hq + hk) * hd].reshape(b_sz, t, hk, hd).transpose(1, 2)
    v = qkv[..., (hq + hk) * hd :].reshape(b_sz, t, hk, hd).transpose(1, 2)
    if attn.q_norm is not None:
        q = naive_rms(q, attn.q_norm.weight, attn.q_norm.eps)
        k = naive_rms(k, attn.k_norm.weight, attn.k_norm.eps)
    if attn.rope is not None:
        pos = positions if positions is not None else torch.arange(t)
        q = naive_rope(q, pos, attn.rope.theta)
        k = naive_rope(k, pos, attn.rope.theta)
    out = naive_attention(q, k, v, allowed)
    out = out.transpose(1, 2).reshape(b_sz, t, hq * hd)
    return out @ attn.out_proj.weight.T + (attn.out_proj.bias if attn.out_proj.bias is not None else 0)
