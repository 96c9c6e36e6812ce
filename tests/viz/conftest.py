"""Fixtures for the pictures: one tiny real digits run, trained and then resumed; tiny CLIP and SAM-CLIP
run folders (random weights: these tests check what is drawn and where, not the models' quality)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_fashion_mnist
from tests.e2e.util import ROOT, run, small_overrides, train_cmd

# SAM-CLIP's shards, teachers and tiny run folder, as its own tests build them
from tests.sam_clip.conftest import clip_teacher_dir, fashion_seg, sam_teacher_pth  # noqa: F401
from tests.sam_clip.test_eval import tiny_run  # noqa: F401


def png(path: Path) -> tuple[tuple[int, int], int, np.ndarray]:
    """(width, height), number of distinct colours, and the RGB pixels of a picture file."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return (rgb.shape[1], rgb.shape[0]), len(np.unique(rgb.reshape(-1, 3), axis=0)), rgb


def pixels_near(rgb: np.ndarray, hex_colour: str, tol: int = 12) -> int:
    """How many pixels are within ``tol`` of ``hex_colour`` (a curve's or a bar's colour) per channel."""
    want = np.array([int(hex_colour.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)])
    return int((np.abs(rgb.astype(int) - want).max(-1) <= tol).sum())


@pytest.fixture(scope="session")
def digits_small(tmp_path_factory) -> Path:
    from corefm.data.image_sets import build

    out = tmp_path_factory.mktemp("digits")
    build("digits", out, train_shards=4, val_shards=2)
    return out


@pytest.fixture(scope="session")
def resumed_run(digits_small, tmp_path_factory) -> Path:
    """A one-rank digits run trained to step 12, then resumed to step 24 (train.max_steps raised), with an
    evaluation every 6 steps: its metrics.jsonl holds both runs' records and a recipe_change event."""
    run_dir = tmp_path_factory.mktemp("resumed") / "digits_run"
    for steps in (12, 24):
        sets = small_overrides(digits_small, run_dir, **{"train.max_steps": steps, "eval.every": 6,
                                                         "eval.max_batches": 2, "checkpoint.every": 6})
        r = run(train_cmd(sets, nproc=1), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def fashion_pl_small(tmp_path_factory) -> Path:
    """OUT/train and OUT/val (2 shards x 48) of Fashion-MNIST image-text pairs with Otsu masks and edges."""
    from projects.clip_pseudo.data.image_text import build
    from projects.clip_pseudo.data.pseudo_label import run as pseudo_label

    require_fashion_mnist()
    it = tmp_path_factory.mktemp("fashion_it")
    build("fashion-mnist", it, samples_per_shard=48, limit=96, workers=2)
    out = tmp_path_factory.mktemp("fashion_pl")
    for split in ("train", "val"):
        pseudo_label(it / split, out / split, "otsu-seg,canny", workers=1)
    return out


def make_clip_run(run_dir: Path, data: Path, *overrides: str) -> Path:
    """A finished-looking CLIP run folder of fashion_tiny.yaml (seg and edges heads), untrained weights."""
    import json

    import torch
    from safetensors.torch import save_file

    from corefm.train.build import build_task
    from corefm.train.config import load_recipe, recipe_to_dict

    torch.manual_seed(0)
    recipe = load_recipe(str(ROOT / "projects/clip_pseudo/configs/fashion_tiny.yaml"),
                         [f"run_dir={run_dir}", f"data.train={data / 'train'}", f"data.val={data / 'val'}", *overrides])
    task = build_task(recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in task.model.state_dict().items()}, str(run_dir / "model.safetensors"))
    (run_dir / "recipe.json").write_text(json.dumps(recipe_to_dict(recipe)))
    (run_dir / "final.json").write_text(json.dumps({"step": 0, "loss": 0.0, "eval": {}}))
    return run_dir
