"""Release folders carry the training curve and the eval's example grids, and their cards show them."""

from __future__ import annotations

import shutil

import numpy as np

from corefm.hub.release import release
from corefm.viz.curves import figure_pixels
from corefm.viz.grid import save_grid
from tests.viz.conftest import png


def test_release_card_shows_the_training_curve(resumed_run, tmp_path, capsys):
    out = tmp_path / "release"
    files = release(resumed_run, out)
    assert out / "training_curve.png" in files
    assert "training_curve.png" in capsys.readouterr().out  # listed in the dry run: it would be uploaded
    size, colours, _ = png(out / "training_curve.png")
    assert size == figure_pixels(3) and colours > 100
    card = (out / "README.md").read_text()
    training = card.split("## Training", 1)[1].split("\n## ", 1)[0]
    assert "![training curve](training_curve.png)" in training  # inside the card's Training section
    assert "## Examples" not in card  # this run has no example grids


def test_release_copies_the_eval_examples(resumed_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(resumed_run, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    grid = save_grid([[np.random.rand(8, 8, 3), np.random.rand(8, 8)]], run_dir / "examples" / "head_seg.png")
    out = tmp_path / "release"
    files = release(run_dir, out, weights="raw")
    assert out / "examples" / "head_seg.png" in files
    assert (out / "examples" / "head_seg.png").read_bytes() == grid.read_bytes()
    card = (out / "README.md").read_text()
    assert "![head_seg](examples/head_seg.png)" in card.split("## Examples", 1)[1]
    assert card.count("![training curve](training_curve.png)") == 1


def test_a_run_without_metrics_releases_as_before(resumed_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(resumed_run, run_dir, ignore=shutil.ignore_patterns("checkpoints", "metrics.jsonl"))
    files = release(run_dir, tmp_path / "release")
    assert sorted(f.name for f in files) == ["README.md", "config.json", "model.safetensors", "recipe.json"]
    assert "training curve" not in (tmp_path / "release" / "README.md").read_text()
