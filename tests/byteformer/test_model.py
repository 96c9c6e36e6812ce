"""ByteFormer: padding is truly masked, batches match single samples, sizes match the paper."""

from __future__ import annotations

import pytest
import torch

from corefm.errors import ConfigError
from corefm.train.config import parse_recipe
from projects.byteformer.model import PAD, PRESETS, ByteFormer, ByteFormerConfig, conv_tokens
from tests.byteformer.conftest import tiny_model_args


def model(**extra) -> ByteFormer:
    return ByteFormer(ByteFormerConfig(**tiny_model_args(**extra))).eval()


def padded(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    out = torch.full((len(rows), length), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@pytest.mark.parametrize("extra", [0, 1, 3, 37, 300])
def test_output_unchanged_when_padded_further(extra):
    m = model()
    rows = [torch.randint(0, 256, (n,)) for n in (150, 61, 7, 1)]
    x = padded(rows, 150)
    with torch.no_grad():
        base = m(x)
        more = m(padded(rows, 150 + extra))
    torch.testing.assert_close(more, base, atol=1e-5, rtol=0)


def test_padding_contents_never_leak():
    """Whatever sits past a row's length (given explicitly) cannot change its output."""
    m = model()
    x = torch.randint(0, 256, (2, 120))
    lengths = torch.tensor([120, 50])
    garbage = x.clone()
    garbage[1, 50:] = torch.randint(0, 256, (70,))
    with torch.no_grad():
        torch.testing.assert_close(m(garbage, lengths), m(x, lengths), atol=1e-5, rtol=0)
        clean = x.clone()
        clean[1, 50:] = PAD
        torch.testing.assert_close(m(clean), m(x, lengths), atol=1e-5, rtol=0)


def test_batch_matches_single_samples():
    m = model()
    rows = [torch.randint(0, 256, (n,)) for n in (200, 129, 33, 16, 5)]
    with torch.no_grad():
        batch = m(padded(rows, 200))
        single = torch.cat([m(r[None]) for r in rows])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=0)


def test_padding_gets_no_gradient_and_real_bytes_do():
    m = model().train()
    x = padded([torch.randint(0, 256, (40,)), torch.randint(0, 256, (90,))], 90)
    m(x).sum().backward()
    assert m.embed.weight.grad[PAD].abs().sum() == 0
    assert m.embed.weight.grad[:PAD].abs().sum() > 0


def test_token_counts_and_merges():
    cfg = ByteFormerConfig(**tiny_model_args())
    assert cfg.stride == 2
    assert conv_tokens(150, 2) == 75 and conv_tokens(151, 2) == 76 and conv_tokens(1, 2) == 1
    m = ByteFormer(cfg)
    x, mask = m.embed_bytes(torch.randint(0, 256, (2, 151)), torch.tensor([151, 10]))
    assert x.shape == (2, 76, 32) and mask.sum(1).tolist() == [76, 5]
    shifts = [b.attn.shift for b in m.blocks]
    assert shifts == [0, 4, 0, 4] and sorted(m.merges) == ["0", "1"]


def test_sizes_follow_the_paper():
    tiny = ByteFormerConfig()
    assert (tiny.dim, tiny.heads, tiny.ffn_dim, tiny.layers, tiny.window_size, tiny.kernel_size) == (192, 3, 768, 12,
                                                                                                  128, 32)
    assert tiny.merge_after == [0, 1, 3, 5, 7, 9]
    m = ByteFormer(ByteFormerConfig(max_bytes=50_000))
    assert [b.attn.shift for b in m.blocks] == [0, 64] * 6
    n = sum(p.numel() for p in m.parameters())
    c = 192
    block = 4 * c * c + 4 * c + 2 * c * 768 + 768 + c + 4 * c  # attention, MLP, two LayerNorms
    expected = 257 * c + 32 * c * c + 3125 * c + 12 * block + 6 * (2 * c * c + c + 2 * c) + 2 * c + c * 10 + 10
    assert n == expected
    assert 7e6 < n < 8e6  # DeiT-Ti's 5.7M blocks plus the 1.2M-parameter Conv1D, positions and merges
    # DeiT-Ti/S/B widths (dim, heads, ffn) as recipe presets; the default is Ti
    assert {k: tuple(v.values()) for k, v in PRESETS.items()} == {
        "tiny": (192, 3, 768), "small": (384, 6, 1536), "base": (768, 12, 3072)}
    assert (ByteFormerConfig().dim, ByteFormerConfig().heads, ByteFormerConfig().ffn_dim) == (192, 3, 768)


def test_presets_come_from_the_recipe_and_explicit_keys_win():
    def parsed(**model):
        return parse_recipe({"model": {"name": "byteformer", **model},
                             "task": {"name": "byte_classification"}}).model

    small = parsed(preset="small")
    assert (small.dim, small.heads, small.ffn_dim) == (384, 6, 1536)
    # heads: 3 is the dataclass default, and still wins over the preset's 6
    mixed = parsed(preset="small", dim=192, heads=3)
    assert (mixed.dim, mixed.heads, mixed.ffn_dim) == (192, 3, 1536)


def test_too_long_input_is_a_clear_error():
    m = model(max_bytes=64)
    with pytest.raises(ValueError, match="exceed the model's max_bytes"):
        m(torch.randint(0, 256, (1, 65)))


@pytest.mark.parametrize("field,value,match", [("kernel_size", 5, "even"), ("merge_after", [0, 9], "outside"),
                                               ("heads", 5, "divisible")])
def test_bad_config_is_one_line(field, value, match):
    raw = {"model": {"name": "byteformer", **tiny_model_args(), field: value},
           "task": {"name": "byte_classification"}}
    with pytest.raises(ConfigError, match=match):
        parse_recipe(raw)


def test_initialisation_follows_corenet():
    """Byte embeddings and positions: truncated normal, std C^-0.5 (padding row zero); Linears: truncated
    normal, std 0.02, zero bias (CoreNet's ByteFormer recipes: linear_init trunc_normal 0.02)."""
    torch.manual_seed(0)
    m = ByteFormer(ByteFormerConfig(dim=256, heads=4, ffn_dim=1024, layers=2, window_size=8, kernel_size=4,
                                    max_bytes=4096, merge_after=[0])).requires_grad_(False)
    c = 256 ** -0.5
    assert abs(float(m.embed.weight[:PAD].std()) - c) < 0.1 * c and float(m.embed.weight[:PAD].abs().max()) <= 2
    assert float(m.embed.weight[PAD].abs().sum()) == 0
    assert abs(float(m.pos.weight.std()) - c) < 0.1 * c
    linears = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    assert len(linears) >= 6
    for lin in linears:
        assert abs(float(lin.weight.std()) - 0.02) < 0.004 and float(lin.weight.abs().max()) <= 2
        assert lin.bias is None or float(lin.bias.abs().sum()) == 0


def test_torch_init_keeps_pytorchs_defaults():
    torch.manual_seed(0)
    m = ByteFormer(ByteFormerConfig(dim=64, heads=2, ffn_dim=128, layers=1, window_size=8, kernel_size=4,
                                    max_bytes=512, merge_after=[], init="torch")).requires_grad_(False)
    assert abs(float(m.embed.weight[:PAD].std()) - 1.0) < 0.1  # nn.Embedding's N(0, 1)
    assert float(m.head.bias.abs().sum()) > 0  # nn.Linear's uniform bias
