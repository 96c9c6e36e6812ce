"""corefm's generic tasks on a (stand-in) CUDA device: classification (ViT) and causal LM (OpenELM)."""

from __future__ import annotations

import pytest
import torch

from corefm.train.build import build_task
from corefm.train.config import load_recipe
from tests.e2e.util import ROOT
from tests.stand_in_device import check_task_on_cuda


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vit_classification_runs_on_cuda(dtype):
    task = build_task(load_recipe(ROOT / "projects/vit/configs/digits_tiny.yaml"))
    size = task.cfg.image_size
    batch = {"image": torch.randn(4, 1, size, size), "label": torch.tensor([0, 3, 9, 1])}
    check_task_on_cuda(task, batch, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_openelm_causal_lm_with_padding_runs_on_cuda(dtype):
    task = build_task(load_recipe(ROOT / "projects/openelm/configs/tiny.yaml", ["task.z_loss=1e-4"]))
    tokens = torch.randint(0, 512, (2, 33))
    tokens[0, 20:] = -1  # chunk-and-pad padding
    outs = check_task_on_cuda(task, {"tokens": tokens}, dtype)
    assert {"loss", "ce", "num_tokens"} <= set(outs["train"])
