"""Shared fixtures: small real Fashion-MNIST image-text shards, with and without pseudo-labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_fashion_mnist


@pytest.fixture(scope="session")
def fashion_it(tmp_path_factory) -> Path:
    """OUT/train and OUT/val (8 shards x 48 each) of real Fashion-MNIST image-text pairs."""
    from projects.clip_pseudo.data.image_text import build

    require_fashion_mnist()
    out = tmp_path_factory.mktemp("fashion_it")
    build("fashion-mnist", out, samples_per_shard=48, limit=384, workers=2)
    return out


@pytest.fixture(scope="session")
def fashion_pl(fashion_it, tmp_path_factory) -> Path:
    """The same shards with Otsu foreground masks (seg.png) and Canny edges (edges.png)."""
    from projects.clip_pseudo.data.pseudo_label import run

    out = tmp_path_factory.mktemp("fashion_pl")
    for split in ("train", "val"):
        run(fashion_it / split, out / split, "otsu-seg,canny", workers=1)
    return out
