import pytest
import torch

from corefm.nn import TokenMerge, cls_pool, eot_pool, masked_mean, max_pool


def _x_and_mask():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 4)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool
    )
    return x, mask


def test_masked_mean_ignores_padding():
    x, mask = _x_and_mask()
    out = masked_mean(x, mask)
    torch.testing.assert_close(out[0], x[0].mean(0))
    torch.testing.assert_close(out[1], x[1, :3].mean(0))
    assert torch.equal(out[2], torch.zeros(4))
    # Appending more padding, even holding inf/NaN garbage, leaves the result unchanged.
    garbage = torch.full((3, 5, 4), float("nan"))
    garbage[:, 0] = float("inf")
    longer = masked_mean(torch.cat((x, garbage), 1), torch.cat((mask, torch.zeros(3, 5, dtype=torch.bool)), 1))
    torch.testing.assert_close(longer, out)
    x_bad = x.clone()
    x_bad[1, 4] = 1e6
    torch.testing.assert_close(masked_mean(x_bad, mask), out)


def test_max_cls_eot_pool():
    x, mask = _x_and_mask()
    out = max_pool(x, mask)
    torch.testing.assert_close(out[1], x[1, :3].amax(0))
    assert torch.equal(out[2], torch.zeros(4))
    torch.testing.assert_close(max_pool(x), x.amax(1))
    assert torch.equal(cls_pool(x), x[:, 0])
    ids = torch.tensor([[5, 9, 2, 0, 0, 0], [1, 2, 3, 4, 49407, 0], [49407, 1, 1, 1, 1, 1]])
    assert torch.equal(eot_pool(x, ids), torch.stack([x[0, 1], x[1, 4], x[2, 0]]))
    with pytest.raises(ValueError, match="mask"):
        masked_mean(x, mask.float())


def test_token_merge_mask_semantics_and_formula():
    torch.manual_seed(1)
    merge = TokenMerge(4)
    x = torch.randn(2, 7, 4)  # odd length: one padded token is appended
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    out, new_mask = merge(x, mask)
    assert out.shape == (2, 4, 4)
    assert new_mask.tolist() == [[True, True, True, True], [True, True, False, False]]
    # Formula for a half-padded pair: the padded partner contributes zeros.
    pair = torch.cat((x[1, 2], torch.zeros(4)))
    expected = merge.norm(pair @ merge.proj.weight.T + merge.proj.bias)
    torch.testing.assert_close(out[1, 1], expected)
    full_pair = torch.cat((x[0, 2], x[0, 3]))
    torch.testing.assert_close(out[0, 1], merge.norm(full_pair @ merge.proj.weight.T + merge.proj.bias))
    # The odd last token merges with a padded slot and stays valid.
    last_pair = torch.cat((x[0, 6], torch.zeros(4)))
    torch.testing.assert_close(out[0, 3], merge.norm(last_pair @ merge.proj.weight.T + merge.proj.bias))
    # Whatever the padded positions hold never reaches a valid merged token.
    x_bad = x.clone()
    x_bad[1, 3:] = 1e4
    out_bad, _ = merge(x_bad, mask)
    torch.testing.assert_close(out_bad[1, :2], out[1, :2])


def test_token_merge_without_mask():
    merge = TokenMerge(4)
    out, mask = merge(torch.randn(2, 6, 4))
    assert out.shape == (2, 3, 4) and mask is None
    out, mask = merge(torch.randn(2, 5, 4))
    assert out.shape == (2, 3, 4) and mask.all()
