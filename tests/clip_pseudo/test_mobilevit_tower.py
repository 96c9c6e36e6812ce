"""CLIP with a MobileViT image tower (model.vision_tower): it trains, and every ViT-only path refuses it."""

from __future__ import annotations

import re

import pytest
import torch

from corefm.errors import ConfigError
from corefm.train.build import build_task
from corefm.train.config import parse_recipe
from projects.clip_pseudo.config import ClipConfig, named_config, to_open_clip_cfg
from projects.clip_pseudo.heads import HeadSpec
from projects.clip_pseudo.model import ClipModel

REFUSED = "needs the ViT image tower (model.vision_tower: vit); this CLIP's image tower is 'mobilevit_v2_050'"


def _cfg(**extra) -> ClipConfig:
    return named_config("micro", vision_tower="mobilevit_v2_050", image_size=64, **extra)


def _tokens(batch: int, length: int = 16) -> torch.Tensor:
    tokens = torch.randint(1, 1000, (batch, length))
    tokens[:, 6] = 49407  # end of text: the largest id of each row
    return tokens


def test_tiny_clip_with_mobilevit_tower_runs_forward_and_backward():
    model = ClipModel(_cfg(gradient_checkpointing=True)).train()
    assert model.visual.width == 256 and model.visual.gradient_checkpointing
    out = model(torch.randn(4, 3, 64, 64), _tokens(4))
    assert out.image_features.shape == out.text_features.shape == (4, 32) and out.dense == {}
    torch.testing.assert_close(out.image_features.norm(dim=-1), torch.ones(4))
    logits = out.logit_scale * out.image_features @ out.text_features.T
    labels = torch.arange(4)
    (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, no_grad
    with torch.no_grad():  # other sides, as a multi-scale batch
        assert model.encode_image(torch.randn(2, 3, 96, 128)).shape == (2, 32)


def test_clip_task_trains_a_mobilevit_clip_without_heads():
    recipe = parse_recipe({"model": {"name": "clip", "preset": "micro", "vision_tower": "mobilevit_v1_xxs",
                                     "image_size": 64},
                           "task": {"name": "clip", "class_names": ["bag", "coat"]}})
    task = build_task(recipe)
    batch = {"image": torch.randn(2, 3, 64, 64), "text": _tokens(2), "label": torch.tensor([0, 1])}
    out = task(batch, mode="train")
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


def test_vision_tower_names_are_checked():
    with pytest.raises(ConfigError, match="unknown image tower 'mobilevit_v3'.*mobilevit_v2_100") as e:
        ClipConfig(vision_tower="mobilevit_v3")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="model.pretrained loads open_clip ViT checkpoints"):
        _cfg(pretrained="/some/open_clip.pt")


def test_dense_heads_refuse_a_mobilevit_tower():
    model = ClipModel(_cfg())
    model.set_heads([])  # plain CLIP is fine
    with pytest.raises(ConfigError) as e:
        model.set_heads([HeadSpec(name="seg", kind="segmentation", key="seg.png", channels=2)])
    assert str(e.value) == f"pseudo-label dense heads (task.heads) {REFUSED}"
    with pytest.raises(ConfigError, match="task.heads"):  # and so does a recipe that names heads
        build_task(parse_recipe({"model": {"name": "clip", "preset": "micro", "vision_tower": "mobilevit_v2_050"},
                                 "task": {"name": "clip", "heads": [{"name": "seg", "kind": "segmentation",
                                                                      "key": "seg.png", "channels": 2}]}}))


def test_dense_probes_refuse_a_mobilevit_tower():
    from projects.clip_pseudo.evaluate import Loaded, run_probes
    from projects.clip_pseudo.task import ClipTaskConfig

    spec = HeadSpec(name="seg", kind="segmentation", key="seg.png", channels=2)
    with pytest.raises(ConfigError, match=re.escape(f"dense probes (--probe) {REFUSED}")):
        run_probes(Loaded(ClipModel(_cfg()), ClipTaskConfig(), []), [spec], {}, {}, 1)


def test_open_clip_export_and_import_refuse_a_mobilevit_tower(tmp_path):
    from projects.clip_pseudo.openclip_io import load_open_clip_weights, save_open_clip

    cfg = _cfg()
    model = ClipModel(cfg)
    with pytest.raises(ConfigError) as e:
        save_open_clip(model, cfg, tmp_path / "export")
    assert str(e.value) == f"open_clip export {REFUSED}"
    assert not (tmp_path / "export").exists()  # refused before anything is written
    with pytest.raises(ConfigError, match="open_clip export"):
        to_open_clip_cfg(cfg)
    with pytest.raises(ConfigError, match=re.escape(f"loading open_clip weights {REFUSED}")):
        load_open_clip_weights(model, tmp_path / "missing.pt")


def test_release_refuses_a_mobilevit_clip_run(tmp_path):
    from projects.clip_pseudo.release import write_clip_release

    recipe = {"model": {"name": "clip", "preset": "micro", "vision_tower": "mobilevit_v2_050"},
              "task": {"name": "clip"}}
    message = f"corefm release of a CLIP run (an open_clip folder) {REFUSED}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        write_clip_release(tmp_path / "run", tmp_path / "out", recipe)
