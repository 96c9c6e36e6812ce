"""Attention kernels for CPUs where torch's fused SDPA is slow: short sequences and single queries.

torch's CPU flash-attention kernel tiles for long sequences; at the lengths small models train and
decode with on a CPU it reaches a tenth of the matmul peak (bf16, batch 4, 8 heads, forward +
backward per layer: 25 ms against 11 ms here at 256 tokens, 82 against 52 ms at 512). These kernels
instead run the (T, S) score matrix as batched matmuls, which the CPU's GEMM runs near its peak, and
keep the softmax in fp32.
:mod:`corefm.nn.kernels` picks the dense kernel under ``auto`` only on CPU, in bf16 (fp32 GEMMs are
too slow for it to win), and only while the score matrix is small (``fits_dense``), so long-context
training keeps the memory-bounded fused kernel. The kernels are plain torch ops, so a forced
``dense`` choice runs on any device.

Grouped-query attention needs no repeated keys: the r = Hq / Hk query heads that share a KV head
are stacked as the rows of one (r * T, hd) x (hd, S) product (query head h reads KV head h // r).
"""

from __future__ import annotations

import torch
from einops import rearrange

# Largest score matrix (B x Hq x T x S elements) computed densely: 16M fp32 scores are 64 MB while
# they exist, and 32 MB of bf16 probabilities kept per layer for the backward pass.
DENSE_MAX_SCORES = 1 << 24


def fits_dense(q: torch.Tensor, k: torch.Tensor) -> bool:
    """True when the score matrix of q: (B, Hq, T, hd), k: (B, Hk, S, hd) is small enough to compute densely."""
    b, hq, t, _ = q.shape
    return b * hq * t * k.shape[-2] <= DENSE_MAX_SCORES


def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One query position per row (KV-cached decoding) as two grouped matmuls.

    q: (B, Hq, 1, hd), k/v: (B, Hk, S, hd) -> (B, Hq, 1, hd); no gradient path needed beyond
    autograd's own (decoding runs under no_grad). ~7x faster than the flash kernel at batch 8.
    """
    b, hq, _, hd = q.shape
    hk = k.shape[1]
    qg = rearrange(q, "b (hk r) 1 d -> b hk r d", hk=hk)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * hd**-0.5  # (B, Hk, r, S)
    out = torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)  # (B, Hk, r, hd)
    return out.reshape(b, hq, 1, hd)


def _parts(t: int, s: int, causal: bool) -> list[tuple[int, int, int]]:
    """(first query row, end row, keys seen) blocks: causal queries split in two halves, so the upper
    half skips the keys it may not see (a quarter of the score matrix at T == S)."""
    if not causal or t < 64:
        return [(0, t, s)]
    h = t // 2
    return [(0, h, s - t + h), (h, t, s)]


def _causal_bias(rows: tuple[int, int], keys: int, offset: int, r: int, like: torch.Tensor) -> torch.Tensor:
    """(r * rows, keys): 0 where query i (at absolute position offset + i) may see key j, else -inf;
    tiled r times for the r query heads stacked per KV head."""
    t0, t1 = rows
    keep = torch.ones(t1 - t0, keys, dtype=torch.bool, device=like.device).tril(diagonal=offset + t0)
    return like.new_zeros(t1 - t0, keys).masked_fill_(~keep, float("-inf")).repeat(r, 1)


class _DenseAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(hd) + bias) v, q grouped by KV head, block by block (see ``_parts``).

    Scores come out of the bf16 GEMM with the scale and the causal bias applied in the same op
    (``baddbmm``); the softmax runs in fp32 and the probabilities are saved in q's dtype.
    Backward (P = probabilities, O = output, dO its gradient, per block):
        dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ = dS K / sqrt(hd),  dK = dS^T Q / sqrt(hd)
    where the products over r * T stacked query rows also sum each KV head's gradient over its group.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool):
        b, hq, t, hd = q.shape
        hk, s = k.shape[1], k.shape[2]
        r = hq // hk
        scale = hd**-0.5
        parts, saved, outs = _parts(t, s, causal), [], []
        for t0, t1, n in parts:
            qp = q[:, :, t0:t1].reshape(b * hk, r * (t1 - t0), hd)
            kp, vp = (x[:, :, :n].reshape(b * hk, n, hd) for x in (k, v))
            bias = _causal_bias((t0, t1), n, s - t, r, q) if causal else q.new_zeros(())
            scores = torch.baddbmm(bias, qp, kp.transpose(1, 2), beta=1.0 if causal else 0.0, alpha=scale)
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.bmm(probs, vp)  # (B * Hk, r * rows, hd)
            saved += [qp, kp, vp, probs, out]
            outs.append(out.view(b, hk, r, t1 - t0, hd))
        ctx.save_for_backward(*saved)
        ctx.parts, ctx.shape, ctx.kv_len = parts, (b, hq, t, hd), s
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=3)).view(b, hq, t, hd)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        b, hq, t, hd = ctx.shape
        saved, s = ctx.saved_tensors, ctx.kv_len
        hk = saved[1].shape[0] // b
        r, scale = hq // hk, hd**-0.5
        grad_q = grad_out.new_empty(b, hk, r, t, hd)
        grad_k = grad_out.new_zeros(b * hk, s, hd, dtype=torch.float32)  # blocks add up in fp32
        grad_v = grad_out.new_zeros(b * hk, s, hd, dtype=torch.float32)
        for i, (t0, t1, n) in enumerate(ctx.parts):
            qp, kp, vp, probs, out = saved[5 * i:5 * i + 5]
            go = grad_out[:, :, t0:t1].reshape(out.shape)
            grad_v[:, :n] += torch.bmm(probs.transpose(1, 2), go)
            row = (go.float() * out.float()).sum(dim=-1, keepdim=True)
            grad_s = (torch.bmm(go, vp.transpose(1, 2)) - row).mul_(probs).to(qp.dtype)  # fp32 by promotion
            grad_q[:, :, :, t0:t1] = torch.bmm(grad_s, kp).view(b, hk, r, t1 - t0, hd)
            grad_k[:, :n] += torch.bmm(grad_s.transpose(1, 2), qp)
        grad_q = grad_q.view(b, hq, t, hd).mul_(scale)
        grad_k = grad_k.mul_(scale).to(grad_out.dtype).view(b, hk, s, hd)
        return grad_q, grad_k, grad_v.to(grad_out.dtype).view(b, hk, s, hd), None


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """q: (B, Hq, T, hd), k/v: (B, Hk, S, hd), Hq % Hk == 0 -> (B, Hq, T, hd).

    causal: query i (the last T of S positions) attends keys j <= S - T + i, as ``build_attention_mask``.
    """
    return _DenseAttention.apply(q, k, v, causal)
