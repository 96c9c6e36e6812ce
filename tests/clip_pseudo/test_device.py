"""CLIP + pseudo-label heads on a (stand-in) CUDA device: no CPU tensor, no host sync in training."""

from __future__ import annotations

import pytest
import torch

from corefm.data import DataConfig, build_eval_loader
from corefm.train.build import build_task
from corefm.train.config import load_recipe
from tests.e2e.util import ROOT
from tests.stand_in_device import check_task_on_cuda


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_clip_with_dense_heads_runs_on_cuda(fashion_pl, dtype):
    recipe = load_recipe(ROOT / "projects/clip_pseudo/configs/fashion_tiny.yaml",
                         ["model.vision_layers=1", "model.text_layers=1"])
    task = build_task(recipe)
    loader = build_eval_loader(str(fashion_pl / "val"), DataConfig(num_workers=0), rank=0, world_size=1,
                               batch_size=8, map_fn=task.sample_transform(True), collate_fn=task.collate)
    outs = check_task_on_cuda(task, next(iter(loader)), dtype)
    assert {"loss", "loss_seg", "loss_edges"} <= set(outs["train"])
