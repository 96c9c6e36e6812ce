"""The dense CPU attention kernel against torch's SDPA (fp64 reference), forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from corefm.nn.kernels.cpu_attention import dense_attention


def _qkv(hq: int, hk: int, t: int, s: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, hq, t, 16, generator=gen)
    k, v = (torch.randn(2, hk, s, 16, generator=gen) for _ in range(2))
    return [x.to(dtype).requires_grad_() for x in (q, k, v)]


def _reference(q, k, v, causal: bool):
    """fp64 SDPA with repeated KV heads and an explicit bottom-right causal mask; output and grads."""
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    r = q.shape[1] // k.shape[1]
    t, s = q.shape[2], k.shape[2]
    mask = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t) if causal else None
    out = F.scaled_dot_product_attention(qd, kd.repeat_interleave(r, 1), vd.repeat_interleave(r, 1), attn_mask=mask)
    return out, (qd, kd, vd)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 6e-2)])
@pytest.mark.parametrize("heads", [(8, 2), (4, 4)])
# T >= 64 causal takes the two-block path (the upper half skips keys it cannot see), odd T included.
@pytest.mark.parametrize("causal,t,s", [(True, 24, 24), (True, 5, 24), (True, 64, 64), (True, 71, 90),
                                        (False, 24, 24), (False, 7, 19)])
def test_dense_attention_matches_sdpa_forward_and_backward(dtype, tol, heads, causal, t, s):
    q, k, v = _qkv(*heads, t, s, dtype)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    out = dense_attention(q, k, v, causal=causal)
    out.backward(grad.to(dtype))
    ref, leaves = _reference(q, k, v, causal)
    ref.backward(grad.double())
    assert out.shape == q.shape and out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    for mine, theirs in zip((q, k, v), leaves):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=tol, atol=tol)
