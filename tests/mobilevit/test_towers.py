"""corefm's MobileViT v1 / v2 towers: sizes against the papers, shapes, gradients, patch layout, cost."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from corefm.nn import Attention, MobileViT, MobileViTv2, SeparableSelfAttention, build_mobilevit_tower
from corefm.nn.mobilevit import TOWERS
from corefm.nn.mobilevit_blocks import fold_v1, fold_v2, make_divisible, unfold_v1, unfold_v2
from corefm.train.meters import ATTENTION_FLOPS

# Parameters with a 1000-class linear head, in millions, as the papers report them (MobileViT,
# arXiv 2110.02178; MobileViTv2, arXiv 2206.02680).
PAPER_M = {"v1_xxs": 1.3, "v1_xs": 2.3, "v1_s": 5.6, "v2_050": 1.4, "v2_075": 2.9, "v2_100": 4.9, "v2_125": 7.5,
           "v2_150": 10.6, "v2_175": 14.3, "v2_200": 18.4}


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list(PAPER_M))
def test_parameter_count_matches_paper(name):
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised for real
        tower = build_mobilevit_tower(name)
    total = _params(tower) + tower.out_dim * 1000 + 1000
    assert round(total / 1e6, 1) == PAPER_M[name], total


def test_make_divisible_follows_the_mobilenet_rule():
    assert make_divisible(32 * 0.75, 8) == 24 and make_divisible(64 * 0.75, 16) == 48
    assert make_divisible(64 * 1.25, 16) == 80 and make_divisible(10, 8) == 16  # round-down under 90% goes up
    assert make_divisible(8, 8, min_value=16) == 16


@pytest.mark.parametrize("name", ["v1_xxs", "v2_050"])
@pytest.mark.parametrize("hw", [(32, 32), (48, 48), (64, 48), (96, 160), (128, 128)])
def test_forward_shapes_at_many_sides(name, hw):
    tower = build_mobilevit_tower(name).eval()
    with torch.no_grad():
        out = tower(torch.randn(2, 3, *hw))
    h, w = -(-hw[0] // 32), -(-hw[1] // 32)
    if name.startswith("v2"):  # v2 rounds an odd last-stage map up to the next multiple of the patch
        h, w = max(2, h + h % 2), max(2, w + w % 2)
    assert out.pooled.shape == (2, tower.out_dim)
    assert out.feature_map.shape == (2, tower.out_dim, h, w)
    torch.testing.assert_close(out.pooled, out.feature_map.mean(dim=(-2, -1)))
    assert torch.isfinite(out.pooled).all()


def test_v1_fold_handles_sides_that_are_not_multiples_of_the_patch():
    """48x48 and 64x48 inputs put 3x3 and 4x3 maps into stage 4's 2x2 patches."""
    tower = MobileViT("xxs").eval()
    for hw, stage4 in (((48, 48), (3, 3)), ((64, 48), (4, 3))):
        feats = tower.forward_features(torch.randn(1, 3, *hw))
        assert [tuple(f.shape[-2:]) for f in feats][3] == stage4
        assert tuple(feats[-1].shape[-2:]) == (2, 2)


def test_unfold_matches_torch_unfold_and_folds_back():
    x = torch.randn(2, 5, 6, 8)
    cols = F.unfold(x, kernel_size=2, stride=2).reshape(2, 5, 4, 12)  # (B, C, P, N)
    torch.testing.assert_close(unfold_v2(x, (2, 2)), cols)
    torch.testing.assert_close(unfold_v1(x, (2, 2)), cols.permute(0, 2, 3, 1).reshape(8, 12, 5))
    torch.testing.assert_close(fold_v1(unfold_v1(x, (2, 2)), (2, 2), (3, 4)), x)
    torch.testing.assert_close(fold_v2(unfold_v2(x, (2, 2)), (2, 2), (3, 4)), x)


@pytest.mark.parametrize("tower_cls,arg", [(MobileViT, "xxs"), (MobileViTv2, 0.5)])
def test_every_parameter_gets_a_gradient(tower_cls, arg):
    tower = tower_cls(arg).train()
    tower(torch.randn(2, 3, 64, 64)).pooled.square().mean().backward()
    for name, p in tower.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_same_gradients_and_batchnorm_counted_once():
    torch.manual_seed(0)
    a, b = MobileViTv2(0.5), MobileViTv2(0.5)
    b.load_state_dict(a.state_dict())
    b.gradient_checkpointing = True
    x = torch.randn(2, 3, 64, 64)
    for tower in (a, b):
        tower(x).pooled.square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)
    assert int(b.stem.norm.num_batches_tracked) == 1  # convolutions (with BatchNorm) are not recomputed


@pytest.mark.parametrize("tower_cls,arg", [(MobileViT, "xxs"), (MobileViTv2, 0.5)])
def test_trains_with_bf16_weights_beside_float32_batchnorm_statistics(tower_cls, arg):
    """DeepSpeed's bf16 mode casts parameters, not buffers: torch's own BatchNorm refuses that mix."""
    tower = tower_cls(arg).train()
    for p in tower.parameters():
        p.data = p.data.bfloat16()
    out = tower(torch.randn(2, 3, 64, 64, dtype=torch.bfloat16))
    assert out.pooled.dtype == torch.bfloat16 and tower.stem.norm.running_mean.dtype == torch.float32
    out.pooled.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in tower.parameters())


@pytest.mark.parametrize("tower_cls,arg", [(MobileViT, "xxs"), (MobileViTv2, 0.5)])
def test_one_or_three_input_channels(tower_cls, arg):
    grey, rgb = tower_cls(arg, in_chans=1).eval(), tower_cls(arg, in_chans=3).eval()
    stem_out = grey.stem.conv.out_channels
    assert _params(rgb) - _params(grey) == stem_out * 2 * 9  # only the stem's 3x3 kernels differ
    with torch.no_grad():
        assert grey(torch.randn(2, 1, 64, 64)).pooled.shape == rgb(torch.randn(2, 3, 64, 64)).pooled.shape


def test_init_is_corenets():
    tower = MobileViTv2(0.5)
    conv = tower.stages[2][0].block[0].conv  # a 1x1 expansion: fan_out = out_channels
    std = (2 / conv.out_channels) ** 0.5
    assert abs(conv.weight.std().item() - std) < 0.15 * std
    norm = tower.stages[2][1].global_rep[0].attn_norm
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    linear = MobileViT("xxs").stages[2][1].global_rep[0].ffn[0]
    assert abs(linear.weight.std().item() - 0.02) < 0.003 and torch.all(linear.bias == 0)


def _flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    # the custom mapping counts torch's CPU SDPA kernel, which FlopCounterMode alone counts as zero
    counter = FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


def test_separable_attention_cost_is_linear_in_tokens():
    dim, n = 64, 256
    sep, mha = SeparableSelfAttention(dim).eval(), Attention(dim, 4, bias=True).eval()
    sep_ratio = _flops(sep, torch.randn(1, dim, 1, 4 * n)) / _flops(sep, torch.randn(1, dim, 1, n))
    mha_ratio = _flops(mha, torch.randn(1, 4 * n, dim)) / _flops(mha, torch.randn(1, n, dim))
    assert sep_ratio == pytest.approx(4.0, rel=0.01)  # 4x the tokens: 4x the FLOPs
    assert mha_ratio > 11  # 4x the tokens: towards 16x as the N^2 term dominates (12x at these sizes)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="valid: v1_xxs"):
        build_mobilevit_tower("v2_300")
    with pytest.raises(ValueError, match="xxs, xs, s"):
        MobileViT("m")
    assert set(TOWERS) == set(PAPER_M)
