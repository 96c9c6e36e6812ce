"""OpenELM's forward pass written out step by step in float64, as Apple's HF port defines it.

Facts followed (from the public description of apple/OpenELM's modeling file): qkv_proj output
reshaped to (B, T, n_q + 2 n_kv, hd) and split [q | k | v]; RMSNorm (eps 1e-6) per head on q and
k; rotate-half RoPE with theta ** (-2i / hd) on q and k; KV heads repeated with
repeat_interleave; causal softmax attention; FFN proj_1 chunked into (y1, y2) -> silu(y1) * y2 ->
proj_2; pre-norm residual blocks; final RMSNorm; logits = h @ token_embeddings.T when tied.
It reads the Apple-named state dict and the HF config's per-layer lists, nothing from corefm.
"""

from __future__ import annotations

import math

import torch


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apple_logits(state: dict[str, torch.Tensor], cfg, ids: torch.Tensor) -> torch.Tensor:
    """state: Apple-named tensors; cfg: HF OpenELMConfig; ids: (B, T) -> logits (B, T, V) float64."""
    sd = {k: v.double() for k, v in state.items()}
    b, t = ids.shape
    hd = cfg.head_dim
    inv_freq = 1.0 / cfg.rope_freq_constant ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angles = torch.outer(torch.arange(t, dtype=torch.float64), inv_freq)
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    x = sd["transformer.token_embeddings.weight"][ids]
    for i in range(cfg.num_transformer_layers):
        p = f"transformer.layers.{i}."
        nq, nkv = cfg.num_query_heads[i], cfg.num_kv_heads[i]
        h = _rms(x, sd[p + "attn_norm.weight"])
        qkv = (h @ sd[p + "attn.qkv_proj.weight"].T).reshape(b, t, nq + 2 * nkv, hd).transpose(1, 2)
        q, k, v = qkv[:, :nq], qkv[:, nq:nq + nkv], qkv[:, nq + nkv:]
        if cfg.normalize_qk_projections:
            q, k = _rms(q, sd[p + "attn.q_norm.weight"]), _rms(k, sd[p + "attn.k_norm.weight"])
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(nq // nkv, dim=1), v.repeat_interleave(nq // nkv, dim=1)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(~causal, float("-inf"))
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, nq * hd)
        x = x + attn @ sd[p + "attn.out_proj.weight"].T
        y1, y2 = (_rms(x, sd[p + "ffn_norm.weight"]) @ sd[p + "ffn.proj_1.weight"].T).chunk(2, dim=-1)
        x = x + (torch.nn.functional.silu(y1) * y2) @ sd[p + "ffn.proj_2.weight"].T
    x = _rms(x, sd["transformer.norm.weight"])
    head = sd["lm_head.weight"] if "lm_head.weight" in sd else sd["transformer.token_embeddings.weight"]
    return x @ head.T
