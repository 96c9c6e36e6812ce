"""Shared fixtures: small real Fashion-MNIST image-text shards, with and without pseudo-labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    np.random.seed(1234)
    yield


@pytest.fixture(scope="session")
def fashion_it(tmp_path_factory) -> Path:
    """OUT/train and OUT/val (8 shards x 48 each) of real Fashion-MNIST image-text pairs."""
    from data_tools.image_text import build
    from data_tools.images import FASHION_ROOT

    if not (FASHION_ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("fashion_it")
    build("fashion-mnist", out, samples_per_shard=48, limit=384, workers=2)
    return out


@pytest.fixture(scope="session")
def fashion_pl(fashion_it, tmp_path_factory) -> Path:
    """The same shards with Otsu foreground masks (seg.png) and Canny edges (edges.png)."""
    from data_tools.pseudo_label import run

    out = tmp_path_factory.mktemp("fashion_pl")
    for split in ("train", "val"):
        run(fashion_it / split, out / split, "otsu-seg,canny", workers=1)
    return out
