"""The `mobilevit` classifier: registry, presets, config errors, and its Fashion-MNIST recipe end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from corefm.errors import ConfigError
from corefm.train.build import build_task
from corefm.train.config import load_recipe, parse_recipe
from tests.conftest import require_fashion_mnist
import json

from tests.e2e.util import ROOT, corefm_cmd, final, losses, run, train_cmd
from tests.stand_in_device import check_task_on_cuda

RECIPE = ROOT / "projects/mobilevit/configs/fashion_v2.yaml"
NAMES = ["v1_xxs", "v1_xs", "v1_s", "v2_050", "v2_075", "v2_100", "v2_125", "v2_150", "v2_175", "v2_200"]


def _model_cfg(**model):
    return parse_recipe({"model": {"name": "mobilevit", **model}, "task": {"name": "classification"}}).model


def test_presets_are_the_papers_sizes():
    from projects.mobilevit.model import PRESETS

    assert list(PRESETS) == NAMES
    cfg = _model_cfg(preset="v1_xs", num_classes=10)
    assert (cfg.version, cfg.variant, cfg.width_multiplier, cfg.dropout) == (1, "xs", None, 0.1)
    cfg = _model_cfg(preset="v2_175")
    assert (cfg.version, cfg.variant, cfg.width_multiplier) == (2, None, 1.75)


@pytest.mark.parametrize("model,match", [
    (dict(version=1, width_multiplier=0.5), "width_multiplier is a MobileViT v2 setting"),
    (dict(preset="v2_050", variant="xs"), "variant is a MobileViT v1 setting"),
    (dict(version=1, variant="m"), "unknown MobileViT v1 variant 'm'"),
    (dict(version=3), "model.version: 3 is not one of 1, 2"),
    (dict(preset="v2_300"), "unknown mobilevit preset 'v2_300'"),
])
def test_config_errors_are_one_line(model, match):
    with pytest.raises(ConfigError, match=match) as e:
        _model_cfg(**model)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("version,size", [(1, "xxs"), (2, 0.5)])
def test_classifier_maps_images_to_logits(version, size):
    from projects.mobilevit.model import MobileViTClassifier, MobileViTConfig

    key = "variant" if version == 1 else "width_multiplier"
    model = MobileViTClassifier(MobileViTConfig(version=version, **{key: size}, num_classes=7, image_size=64,
                                                in_chans=1)).eval()
    assert (model.num_classes, model.image_size, model.in_chans) == (7, 64, 1)
    with torch.no_grad():
        assert model(torch.randn(3, 1, 64, 64)).shape == (3, 7)
        assert model(torch.randn(3, 1, 96, 64)).shape == (3, 7)  # another side, as a multi-scale batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_recipe_task_runs_on_cuda(dtype):
    task = build_task(load_recipe(RECIPE))
    assert (task.cfg.image_size, task.cfg.channels) == (64, 1)  # taken from the model
    batch = {"image": torch.randn(4, 1, 64, 64), "label": torch.tensor([0, 3, 9, 1])}
    check_task_on_cuda(task, batch, dtype)


@pytest.fixture(scope="module")
def fashion_small(tmp_path_factory) -> Path:
    """256 train / 64 val real Fashion-MNIST images as image shards."""
    from corefm.data.image_sets import fashion_mnist, write_split

    require_fashion_mnist()
    train, val, classes = fashion_mnist()
    out = tmp_path_factory.mktemp("fashion")
    write_split((train[0][:256], train[1][:256]), classes, out / "train", "train", 4, "fashion-mnist")
    write_split((val[0][:64], val[1][:64]), classes, out / "val", "val", 2, "fashion-mnist")
    return out


@pytest.mark.slow
def test_fashion_recipe_smoke(fashion_small, tmp_path):
    """The recipe as written (2 ranks, ZeRO-2, fp32), cut to 6 steps: it trains, evaluates and exports."""
    run_dir = tmp_path / "run"
    sets = {"run_dir": run_dir, "data.train": fashion_small / "train", "data.val": fashion_small / "val",
            "train.max_steps": 6, "train.micro_batch_size": 16, "schedule.warmup_steps": 2, "log.every": 1,
            "log.progress": False, "checkpoint.every": 0, "eval.every": 0, "data.num_workers": 1,
            "data.shuffle_buffer": 50}
    r = run(train_cmd([f"{k}={v}" for k, v in sets.items()], nproc=2, recipe=RECIPE), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mobilevit/classification, 2 rank(s)" in r.stdout + r.stderr
    steps = losses(run_dir)
    assert sorted(steps) == list(range(1, 7)) and all(0 < v < 5 for v in steps.values())
    result = final(run_dir)
    assert result["eval"]["samples"] == 64 and (run_dir / "model.safetensors").is_file()
    # BatchNorm statistics are averaged over the ranks before evaluations and checkpoints, so the
    # exported model evaluates alone exactly as the two ranks did
    alone = run(corefm_cmd("eval", str(run_dir)))
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert json.loads(alone.stdout)["loss"] == pytest.approx(result["eval"]["loss"], rel=1e-6)


def test_fashion_recipe_with_the_whole_toolkit(fashion_small, tmp_path):
    """The toolkit recipe (multi-scale sampler, RangeAugment, weight EMA), 2 ranks, cut to 6 steps: it
    trains, logs the ranges, and evaluates the EMA beside the raw weights."""
    run_dir = tmp_path / "run"
    sets = {"run_dir": run_dir, "data.train": fashion_small / "train", "data.val": fashion_small / "val",
            "train.max_steps": 6, "train.micro_batch_size": 8, "schedule.warmup_steps": 2, "log.every": 1,
            "log.progress": False, "checkpoint.every": 0, "eval.every": 0, "data.num_workers": 1,
            "data.shuffle_buffer": 50, "ema.momentum": 0.1}
    recipe = RECIPE.with_name("fashion_v2_toolkit.yaml")
    r = run(train_cmd([f"{k}={v}" for k, v in sets.items()], nproc=2, recipe=recipe), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [rec for rec in records if rec["kind"] == "train"]
    assert len(train) == 6 and all("ra_psnr" in rec and "ra_brightness_lo" in rec for rec in train)
    result = final(run_dir)
    assert {"accuracy", "ema_accuracy"} <= set(result["eval"]) and (run_dir / "model_ema.safetensors").is_file()
