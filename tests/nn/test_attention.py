import math

import pytest
import torch

from corefm.nn import Attention, KVCache, RotaryEmbedding, apply_rotary

from ._reference import naive_rope, naive_self_attention

B, T, D = 2, 12, 32


def _padding_mask() -> torch.Tensor:
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 8:] = False  # second row has 4 padded tokens
    return mask


def _allowed(causal: bool, kpm: torch.Tensor | None, t: int = T, s: int = T) -> torch.Tensor:
    allowed = torch.ones(B, t, s, dtype=torch.bool)
    for b in range(B):
        for i in range(t):
            for j in range(s):
                if causal and j > (s - t) + i:
                    allowed[b, i, j] = False
                if kpm is not None and not kpm[b, j]:
                    allowed[b, i, j] = False
    return allowed


CASES = {
    "plain": dict(),
    "causal": dict(causal=True),
    "padding": dict(padding=True),
    "causal_padding": dict(causal=True, padding=True),
    "gqa": dict(num_kv_heads=2),
    "gqa_causal_padding": dict(num_kv_heads=1, causal=True, padding=True),
    "qk_norm": dict(qk_norm=True),
    "rope": dict(rope=True, causal=True),
    "all": dict(num_kv_heads=2, qk_norm=True, rope=True, causal=True, padding=True, bias=True),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_attention_matches_naive(case):
    cfg = CASES[case]
    torch.manual_seed(0)
    heads, head_dim = 4, 8
    rope = RotaryEmbedding(head_dim, theta=500.0, max_len=4) if cfg.get("rope") else None  # max_len < T: lazy growth
    attn = Attention(
        D, heads, num_kv_heads=cfg.get("num_kv_heads"), head_dim=head_dim, bias=cfg.get("bias", False),
        qk_norm=cfg.get("qk_norm", False), rope=rope, causal=cfg.get("causal", False),
    )
    if attn.q_norm is not None:  # non-trivial norm weights so a missing norm cannot pass
        torch.nn.init.uniform_(attn.q_norm.weight, 0.5, 1.5)
        torch.nn.init.uniform_(attn.k_norm.weight, 0.5, 1.5)
    x = torch.randn(B, T, D)
    kpm = _padding_mask() if cfg.get("padding") else None
    out = attn(x, key_padding_mask=kpm)
    with torch.no_grad():
        ref = naive_self_attention(attn, x, _allowed(cfg.get("causal", False), kpm))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_extra_attn_mask_2d_and_4d():
    torch.manual_seed(1)
    attn = Attention(D, 4, num_kv_heads=2)
    x = torch.randn(B, T, D)
    extra = torch.rand(T, T) > 0.3
    extra_b = torch.rand(B, 1, T, T) > 0.3
    kpm = _padding_mask()
    with torch.no_grad():
        torch.testing.assert_close(
            attn(x, attn_mask=extra, key_padding_mask=kpm),
            naive_self_attention(attn, x, _allowed(False, kpm) & extra),
            atol=1e-5, rtol=1e-4,
        )
        torch.testing.assert_close(
            attn(x, attn_mask=extra_b), naive_self_attention(attn, x, extra_b[:, 0]), atol=1e-5, rtol=1e-4
        )


def test_fully_masked_rows_are_zero_and_grads_finite():
    torch.manual_seed(2)
    attn = Attention(D, 4, bias=False)
    x = torch.randn(B, T, D, requires_grad=True)
    kpm = torch.ones(B, T, dtype=torch.bool)
    kpm[0] = False  # every key of sample 0 masked
    extra = torch.ones(T, T, dtype=torch.bool)
    extra[3] = False  # query 3 of every sample sees nothing
    out = attn(x, key_padding_mask=kpm, attn_mask=extra)
    assert not torch.isnan(out).any()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(out[1, 3], torch.zeros_like(out[1, 3]))
    assert out[1, 2].abs().sum() > 0
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_rotary_matches_complex_rotation_and_grows():
    torch.manual_seed(3)
    rope = RotaryEmbedding(8, theta=10000.0, max_len=4)
    q, k = torch.randn(2, 3, 6, 8), torch.randn(2, 1, 6, 8)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [7, 3, 9, 0, 2, 40]])
    q_rot, k_rot = rope(q, k, positions)
    assert rope.table(0, torch.device("cpu"))[0].shape[0] >= 41  # grown past max_len
    torch.testing.assert_close(q_rot, naive_rope(q, positions), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_rot, naive_rope(k, positions), atol=1e-5, rtol=1e-5)
    # Rotation preserves norms and the q.k product depends only on the position offset.
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))
    a, _ = rope(q[:, :, :1], q[:, :, :1], torch.tensor([5]))
    b, _ = rope(k[:, :, :1].expand(-1, 3, -1, -1), k[:, :, :1], torch.tensor([2]))
    a2, _ = rope(q[:, :, :1], q[:, :, :1], torch.tensor([15]))
    b2, _ = rope(k[:, :, :1].expand(-1, 3, -1, -1), k[:, :, :1], torch.tensor([12]))
    torch.testing.assert_close((a * b).sum(-1), (a2 * b2).sum(-1), atol=1e-5, rtol=1e-5)


def test_rotary_tables_stay_float32_after_half_cast():
    rope = RotaryEmbedding(16, max_len=64).to(torch.bfloat16)
    q = torch.randn(1, 2, 5, 16, dtype=torch.bfloat16)
    positions = torch.arange(1000, 1005)
    q_rot, _ = rope(q, q, positions)
    assert q_rot.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in rope.table(1005, torch.device("cpu")))
    cos, sin = RotaryEmbedding(16, max_len=2048).cos_sin(positions)
    torch.testing.assert_close(q_rot, apply_rotary(q, q, cos, sin)[0])
    # apply_rotary works in float32: the same rotation done in bf16 arithmetic differs.
    cos_b, sin_b = cos.to(torch.bfloat16), sin.to(torch.bfloat16)
    assert not torch.equal(q_rot, q * cos_b + torch.cat((-q[..., 8:], q[..., :8]), -1) * sin_b)
    assert len(rope.state_dict()) == 0


@pytest.mark.parametrize("num_kv_heads", [4, 2])
def test_kv_cache_matches_full_causal(num_kv_heads):
    torch.manual_seed(4)
    attn = Attention(D, 4, num_kv_heads=num_kv_heads, qk_norm=True, rope=RotaryEmbedding(8), causal=True)
    x = torch.randn(B, T, D)
    full = attn(x)
    cache = KVCache(num_layers=1)
    steps = [attn(x[:, :5], kv_cache=cache, layer_idx=0)]
    assert cache.seq_len == 5
    steps.append(attn(x[:, 5:9], kv_cache=cache, layer_idx=0))  # a multi-token chunk after a prefix
    steps += [attn(x[:, i : i + 1], kv_cache=cache, layer_idx=0) for i in range(9, T)]
    assert cache.seq_len == T and cache.get(0)[0].shape == (B, num_kv_heads, T, 8)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    cache.reset()
    assert cache.seq_len == 0


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        Attention(D, 4, num_kv_heads=3)
    with pytest.raises(ValueError, match="head_dim"):
        Attention(30, 4)
    with pytest.raises(ValueError, match="rope.head_dim"):
        Attention(D, 4, rope=RotaryEmbedding(16))
    attn = Attention(D, 4)
    x = torch.randn(B, T, D)
    with pytest.raises(ValueError, match="key_padding_mask"):
        attn(x, key_padding_mask=torch.ones(B, T))
    with pytest.raises(ValueError, match="attn_mask"):
        attn(x, attn_mask=torch.ones(T, T + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="layer_idx"):
        attn(x, kv_cache=KVCache())
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(7)


def test_sdpa_scale_is_inverse_sqrt_head_dim():
    # One query, two keys: the softmax weight follows exp(q.k / sqrt(hd)) exactly.
    attn = Attention(4, 1, head_dim=4)
    with torch.no_grad():
        attn.qkv_proj.weight.zero_()
        attn.qkv_proj.weight[0:4] = torch.eye(4)  # q = x
        attn.qkv_proj.weight[4:8] = torch.eye(4)  # k = x
        attn.qkv_proj.weight[8:12] = torch.eye(4)  # v = x
        attn.out_proj.weight.copy_(torch.eye(4))
    x = torch.tensor([[[1.0, 0, 0, 0], [0, 2.0, 0, 0]]])
    out = attn(x)
    w = torch.softmax(torch.tensor([1.0, 0.0]) / math.sqrt(4), dim=0)
    torch.testing.assert_close(out[0, 0], w[0] * x[0, 0] + w[1] * x[0, 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", [(8, 2), (4, 4)])
def test_single_query_path_equals_torch_sdpa(dtype, heads):
    """Decoding's one-query grouped-matmul path (GQA without repeated keys) against torch's kernel."""
    from corefm.nn.attention import sdpa

    hq, hk = heads
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(3, hq, 1, 16, generator=gen).to(dtype)
    k, v = (torch.randn(3, hk, 37, 16, generator=gen).to(dtype) for _ in range(2))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float().repeat_interleave(hq // hk, 1), v.float().repeat_interleave(hq // hk, 1))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    out = sdpa(q, k, v)
    assert out.shape == q.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, **tol)
