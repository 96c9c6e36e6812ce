import pytest
import torch

from corefm.nn import TextTransformer, VisionTransformer

import open_clip.transformer as open_clip_transformer


def _map_blocks(src: dict, layers: int) -> dict:
    """open_clip resblock names -> corefm TransformerBlock names (same tensors, no reshuffle)."""
    out = {}
    names = {
        "ln_1": "attn_norm", "attn.in_proj_weight": "attn.qkv_proj.weight", "attn.in_proj_bias": "attn.qkv_proj.bias",
        "attn.out_proj": "attn.out_proj", "ln_2": "ffn_norm", "mlp.c_fc": "ffn.fc1", "mlp.c_proj": "ffn.fc2",
    }
    for i in range(layers):
        prefix = f"transformer.resblocks.{i}."
        for key, value in src.items():
            if key.startswith(prefix):
                rest = key[len(prefix):]
                for a, b in names.items():
                    if rest.startswith(a):
                        out[f"blocks.{i}.{b}{rest[len(a):]}"] = value
    return out


def test_vit_matches_open_clip():
    torch.manual_seed(0)
    ref = open_clip_transformer.VisionTransformer(32, 8, 64, 2, 4, 4.0, output_dim=16, output_tokens=True).eval()
    sd = ref.state_dict()
    mapped = _map_blocks(sd, 2) | {
        "patch_embed.proj.weight": sd["conv1.weight"], "class_token": sd["class_embedding"],
        "positions.weight": sd["positional_embedding"], "proj.weight": sd["proj"].T,
    }
    mapped |= {k: v for k, v in sd.items() if k.startswith(("ln_pre", "ln_post"))}
    model = VisionTransformer(32, 8, 64, 2, 4, output_dim=16).eval()
    model.load_state_dict(mapped, strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled_ref, tokens_ref = ref(images)
        out = model(images)
    torch.testing.assert_close(out.pooled, pooled_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.patch_tokens, tokens_ref, atol=1e-5, rtol=1e-4)


def test_text_matches_open_clip():
    torch.manual_seed(1)
    ref = open_clip_transformer.TextTransformer(
        context_length=16, vocab_size=100, width=32, heads=4, layers=2, output_dim=8
    ).eval()
    sd = ref.state_dict()
    mapped = _map_blocks(sd, 2) | {
        "token_embeddings.weight": sd["token_embedding.weight"], "positions.weight": sd["positional_embedding"],
        "proj.weight": sd["text_projection"].T, "ln_final.weight": sd["ln_final.weight"],
        "ln_final.bias": sd["ln_final.bias"],
    }
    model = TextTransformer(100, 16, 32, 2, 4, output_dim=8).eval()
    model.load_state_dict(mapped, strict=True)
    tokens = torch.randint(1, 90, (3, 16), generator=torch.Generator().manual_seed(2))
    tokens[0, 5], tokens[0, 6:] = 99, 0  # EOT (largest id) then padding
    tokens[1, 15] = 99
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), ref(tokens), atol=1e-5, rtol=1e-4)


def test_vit_b16_matches_open_clip_size():
    with torch.device("meta"):
        ours = VisionTransformer(224, 16, 768, 12, 12, output_dim=512)
        theirs = open_clip_transformer.VisionTransformer(224, 16, 768, 12, 12, 4.0, output_dim=512)
    assert ours.num_patches == 196
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_shapes(pool):
    model = VisionTransformer(32, 8, 48, 2, 4, output_dim=24, pool=pool)
    out = model(torch.randn(3, 3, 32, 32))
    assert out.pooled.shape == (3, 24) and out.patch_tokens.shape == (3, 16, 48)
    assert model.positions.weight.shape[0] == 16 + (pool == "cls")
    # Another resolution: positions are resized, the patch count follows the image.
    out = model(torch.randn(1, 3, 48, 40))
    assert out.patch_tokens.shape == (1, 30, 48)
    if pool == "mean":
        torch.testing.assert_close(out.pooled, model.proj(out.patch_tokens.mean(1)))
    no_proj = VisionTransformer(32, 8, 48, 1, 4, pool=pool)
    assert no_proj(torch.randn(2, 3, 32, 32)).pooled.shape == (2, 48)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="pool"):
        VisionTransformer(32, 8, 48, 1, 4, pool="max")


def test_text_shapes_and_causality():
    torch.manual_seed(3)
    model = TextTransformer(50, 10, 32, 2, 4, output_dim=12).eval()
    tokens = torch.randint(0, 49, (2, 10))
    assert model(tokens).shape == (2, 12)
    feats = model.forward_tokens(tokens)
    changed = tokens.clone()
    changed[:, 7:] = 3
    # Causal: features of tokens before position 7 cannot see the change.
    torch.testing.assert_close(model.forward_tokens(changed)[:, :7], feats[:, :7])
    assert not torch.allclose(model.forward_tokens(changed)[:, 7:], feats[:, 7:])
