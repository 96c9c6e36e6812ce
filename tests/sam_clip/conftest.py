"""Shared fixtures: real Fashion-MNIST shards with Otsu masks, a tiny open_clip CLIP teacher and a
tiny segment_anything SAM teacher (random weights: the tests check plumbing, not quality)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import require_fashion_mnist


@pytest.fixture(scope="session")
def fashion_seg(tmp_path_factory) -> Path:
    """OUT/train and OUT/val (4 shards x 32 each) of Fashion-MNIST images with seg.png and cls."""
    from projects.clip_pseudo.data.image_text import build
    from projects.clip_pseudo.data.pseudo_label import run

    require_fashion_mnist()
    it = tmp_path_factory.mktemp("fashion_it")
    build("fashion-mnist", it, samples_per_shard=32, limit=128, workers=2)
    out = tmp_path_factory.mktemp("fashion_seg")
    for split in ("train", "val"):
        run(it / split, out / split, "otsu-seg", workers=1)
    return out


@pytest.fixture(scope="session")
def clip_teacher_dir(tmp_path_factory) -> Path:
    """An open_clip folder of corefm's tiny CLIP (28 px, embed 64), as `corefm release` writes it."""
    from projects.clip_pseudo.config import named_config
    from projects.clip_pseudo.model import ClipModel
    from projects.clip_pseudo.openclip_io import save_open_clip

    torch.manual_seed(0)
    cfg = named_config("tiny")
    out = tmp_path_factory.mktemp("clip_teacher")
    save_open_clip(ClipModel(cfg), cfg, out)
    return out


def make_sam_teacher(out: Path, seed: int = 0, **overrides) -> Path:
    from projects.sam_clip.model import build_sam, named_config
    from projects.sam_clip.teachers import save_sam_checkpoint

    torch.manual_seed(seed)
    cfg = named_config("tiny", **overrides)
    return save_sam_checkpoint(build_sam(cfg).state_dict(), cfg, out / "sam.pth")


@pytest.fixture(scope="session")
def sam_teacher_pth(tmp_path_factory) -> Path:
    """segment_anything .pth (+ sam_config.json) of a random tiny SAM."""
    return make_sam_teacher(tmp_path_factory.mktemp("sam_teacher"))
