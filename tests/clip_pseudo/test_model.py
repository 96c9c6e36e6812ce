"""The CLIP model against open_clip itself: export, import, shapes and sizes."""

from __future__ import annotations

import pytest
import torch

import open_clip

from corefm.errors import CheckpointError, ConfigError  # noqa: E402
from projects.clip_pseudo.config import ClipConfig, from_open_clip_cfg, named_config, to_open_clip_cfg  # noqa: E402
from projects.clip_pseudo.heads import HeadSpec  # noqa: E402
from projects.clip_pseudo.model import ClipModel  # noqa: E402
from projects.clip_pseudo.openclip_io import (  # noqa: E402
    load_heads, load_open_clip_checkpoint, save_open_clip, to_open_clip_state_dict)

CAPTIONS = ["a photo of a sneaker.", "trousers", "a black and white photo of a handbag on a table"]


def _inputs(cfg: ClipConfig, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(3, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    return images, tokenizer(CAPTIONS)


def _same_features(ours, theirs, images, tokens) -> None:
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), theirs.encode_image(images), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.encode_text(tokens), theirs.encode_text(tokens), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_export_loads_in_open_clip_with_same_features(tmp_path, quick_gelu):
    cfg = named_config("micro", quick_gelu=quick_gelu)
    model = ClipModel(cfg).eval()
    save_open_clip(model, cfg, tmp_path)
    theirs, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(tmp_path))
    tokenizer = open_clip.get_tokenizer("local-dir:" + str(tmp_path))
    assert isinstance(theirs, open_clip.CLIP) and tokenizer.context_length == cfg.context_length
    _same_features(model, theirs.eval(), *_inputs(cfg, tokenizer))
    assert float(theirs.logit_scale.detach()) == pytest.approx(float(model.logit_scale.detach()))
    assert preprocess.transforms[0].size == cfg.image_size  # preprocess_cfg travelled too


def test_open_clip_checkpoint_initialises_ours(tmp_path):
    """A randomly initialised open_clip CLIP (pretrained=None), saved as open_clip saves it, loads into ours."""
    # head counts leave no trace in tensors: inference assumes width / 64, as open_clip's configs do
    cfg = ClipConfig(embed_dim=32, image_size=32, patch_size=8, vision_width=128, vision_layers=2,
                     context_length=16, text_width=128, text_heads=2, text_layers=2)
    theirs = open_clip.CLIP(**to_open_clip_cfg(cfg)).eval()
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in theirs.state_dict().items()}},
               tmp_path / "epoch_3.pt")  # open_clip_train's checkpoint layout (DDP prefix)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=cfg.context_length)
    for source in (dict(config=cfg), dict(config=None)):  # given config, or shapes inferred from tensors
        ours = load_open_clip_checkpoint(tmp_path / "epoch_3.pt", **source).eval()
        assert ours.cfg == cfg
        _same_features(ours, theirs, *_inputs(cfg, tokenizer))
    # the recipe route: model.pretrained names the checkpoint
    from projects.clip_pseudo.model import build_clip

    recipe_cfg = ClipConfig(**{**vars(cfg), "pretrained": str(tmp_path / "epoch_3.pt")})
    _same_features(build_clip(recipe_cfg).eval(), theirs, *_inputs(cfg, tokenizer))


def test_built_in_open_clip_names_map_to_same_sizes():
    for name in ("ViT-B-16", "ViT-B-32", "ViT-S-16"):
        cfg = named_config(name)
        with torch.device("meta"):
            ours = ClipModel(cfg)
            theirs = open_clip.CLIP(**open_clip.get_model_config(name))
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
        assert set(to_open_clip_state_dict(ours.state_dict())) == set(theirs.state_dict())
    b16 = named_config("ViT-B-16")
    assert (b16.vision_width, b16.vision_layers, b16.vision_heads, b16.text_width, b16.embed_dim) == (768, 12, 12, 512, 512)
    with pytest.raises(ConfigError, match="timm_model_name"):
        named_config("ViT-B-16-SigLIP")  # a timm image tower: refused, not silently changed
    with pytest.raises(ConfigError, match="unknown CLIP size"):
        named_config("ViT-X-99")


def test_siglip_bias_round_trips(tmp_path):
    cfg = named_config("micro", init_logit_bias=-10.0, init_logit_scale=2.302585)
    model = ClipModel(cfg)
    assert model.logit_scale.shape == (1,) and model.logit_bias.shape == (1,)  # DeepSpeed refuses 0-dim params
    save_open_clip(model, cfg, tmp_path)
    theirs = open_clip.create_model("local-dir:" + str(tmp_path))
    assert float(theirs.logit_bias.detach()) == -10.0 and from_open_clip_cfg(to_open_clip_cfg(cfg)) == cfg


def test_text_truncated_at_last_eot_matches_full_context():
    cfg = named_config("micro")
    model = ClipModel(cfg).eval()
    tokens = open_clip.get_tokenizer("ViT-B-32", context_length=cfg.context_length)(CAPTIONS)
    assert model.encode_text(tokens).shape == (3, cfg.embed_dim)
    with torch.no_grad():
        full = model.text(tokens)  # the tower on all 16 positions, no truncation
        torch.testing.assert_close(model.encode_text(tokens), full, atol=1e-6, rtol=1e-5)


def test_heads_travel_beside_the_export(tmp_path):
    cfg = named_config("micro")
    model = ClipModel(cfg)
    model.set_heads([HeadSpec("seg", "segmentation", "seg.png", channels=3, up=2)])
    files = save_open_clip(model, cfg, tmp_path)
    assert {f.name for f in files} >= {"heads.safetensors", "heads.json"}
    # open_clip ignores the extra file; our loader restores the heads
    open_clip.create_model("local-dir:" + str(tmp_path))
    again = load_open_clip_checkpoint(tmp_path)
    load_heads(again, tmp_path)
    torch.testing.assert_close(again.heads["seg"].out.weight, model.heads["seg"].out.weight)


def test_bad_checkpoints_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_open_clip_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_open_clip_checkpoint(tmp_path / "junk.pt")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="has no counterpart|not an open_clip"):
        load_open_clip_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="multiple of"):
        ClipConfig(vision_width=100)
