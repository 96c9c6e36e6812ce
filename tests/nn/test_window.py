import pytest
import torch

from corefm.nn import RotaryEmbedding, TransformerBlock, WindowedAttention, window_partition_2d, window_unpartition_2d

from ._reference import naive_self_attention

B, T, D, W = 2, 37, 32, 8


def _valid() -> torch.Tensor:
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 27:] = False  # trailing padding
    valid[1, 3] = False  # and a hole, to be sure the mask is used per position
    return valid


def _explicit_mask(valid: torch.Tensor, shift: int, causal: bool) -> torch.Tensor:
    """Full-attention mask by hand: i sees j iff j is valid and both sit in the same window,
    windows having boundaries at shift + n * W (floor division puts the first `shift`
    tokens in a window of their own)."""
    allowed = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            for j in range(T):
                same = (i - shift) // W == (j - shift) // W
                allowed[b, i, j] = bool(valid[b, j]) and same and (not causal or j <= i)
    return allowed


@pytest.mark.parametrize("shift", [0, W // 2])
@pytest.mark.parametrize("variant", ["plain", "gqa_rope", "causal"])
def test_windowed_equals_masked_full_attention(shift, variant):
    torch.manual_seed(shift)
    kwargs = dict(bias=True)
    if variant == "gqa_rope":
        kwargs = dict(num_kv_heads=2, rope=RotaryEmbedding(8), qk_norm=True)
    attn = WindowedAttention(D, 4, causal=variant == "causal", window_size=W, shift=shift, **kwargs)
    x = torch.randn(B, T, D)
    valid = _valid()
    out = attn(x, key_padding_mask=valid)
    with torch.no_grad():
        ref = naive_self_attention(attn, x, _explicit_mask(valid, shift, variant == "causal"))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_windowed_no_mask_and_no_cross_boundary():
    torch.manual_seed(5)
    attn = WindowedAttention(D, 4, window_size=W, shift=W // 2)
    x = torch.randn(1, 2 * W, D)  # a multiple of the window: no padding added
    out = attn(x)
    with torch.no_grad():
        allowed = _explicit_mask(torch.ones(B, T, dtype=torch.bool), W // 2, False)[:1, : 2 * W, : 2 * W]
        ref = naive_self_attention(attn, x, allowed)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    # Changing the last token must not move the first (they share a rolled window only by wrap-around).
    x2 = x.clone()
    x2[0, -1] += 10.0
    torch.testing.assert_close(attn(x2)[0, : W // 2], out[0, : W // 2])


def test_windowed_all_padded_sample_is_zero_not_nan():
    attn = WindowedAttention(D, 4, window_size=W, shift=0, bias=False)
    valid = torch.zeros(2, 20, dtype=torch.bool)
    valid[0, :5] = True
    out = attn(torch.randn(2, 20, D), key_padding_mask=valid)
    assert not torch.isnan(out).any()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(out[0, 8:], torch.zeros_like(out[0, 8:]))  # windows with no valid key


def test_window_block_and_bad_arguments():
    block = TransformerBlock(D, 4, 64, window_size=W, window_shift=W // 2)
    assert isinstance(block.attn, WindowedAttention)
    assert block(torch.randn(B, T, D), key_padding_mask=_valid()).shape == (B, T, D)
    with pytest.raises(ValueError, match="shift"):
        WindowedAttention(D, 4, window_size=W, shift=W)
    with pytest.raises(ValueError, match="kv_cache"):
        block.attn(torch.randn(B, T, D), attn_mask=torch.ones(T, T, dtype=torch.bool))
    with pytest.raises(ValueError, match="window_size"):
        TransformerBlock(D, 4, 64, window_shift=2)


def test_window_partition_2d_roundtrip_and_layout():
    torch.manual_seed(6)
    x = torch.randn(2, 10, 13, 3)
    windows, pad_hw = window_partition_2d(x, 4)
    assert pad_hw == (12, 16) and windows.shape == (2 * 3 * 4, 4, 4, 3)
    # Window (b, row r, col c) is at index b * 12 + r * 4 + c and holds the padded image block.
    padded = torch.zeros(2, 12, 16, 3)
    padded[:, :10, :13] = x
    for b, r, c in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        assert torch.equal(windows[b * 12 + r * 4 + c], padded[b, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4])
    assert torch.equal(window_unpartition_2d(windows, 4, pad_hw, (10, 13)), x)
