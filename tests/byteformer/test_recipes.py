"""Every ByteFormer recipe builds its model and task and runs a real sample through both."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corefm.train.build import build_task
from corefm.train.config import load_recipe
from tests.byteformer._data import wav_bytes

RECIPES = sorted((Path(__file__).resolve().parents[2] / "projects/byteformer/configs").glob("*.yaml"))


def photo(size: int = 28, mode: str = "L") -> bytes:
    y, x = np.mgrid[0:size, 0:size]
    img = Image.fromarray(((x * 7 + y * 3) % 256).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_a_sample(path):
    recipe = load_recipe(path)
    task = build_task(recipe)
    if recipe.task_name == "classification":  # the pixel-ViT baseline
        assert recipe.model.width == load_recipe(path.with_name("fashion_tiff.yaml")).model.dim
        batch = task.collate([task.sample_transform(True)({"png": photo(), "cls": b"3"})] * 2)
        assert task(batch)["loss"].isfinite()
        return
    samples = []
    if "speech" not in path.stem:
        samples.append({"__key__": "i", "png": photo(), "cls": b"3"})
    if "speech" in path.stem or "joint" in path.stem:
        samples.append({"__key__": "a", "wav": wav_bytes(0.8), "cls": b"4"})
    fn = task.sample_transform(True)
    out = [fn(s) for s in samples]
    if "imagenet" in path.stem:  # full size: check the encoding fits, skip the 46-GFLOP forward
        assert 150_528 < len(out[0]["bytes"]) <= recipe.model.max_bytes
        return
    with torch.no_grad():
        result = task(task.collate(out), mode="eval")
    assert result["count"] == len(samples)
