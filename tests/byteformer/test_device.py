"""ByteFormer on a (stand-in) CUDA device: masks, merges and pooling stay there, no host sync in training."""

from __future__ import annotations

import pytest
import torch

from corefm.train.build import build_task
from corefm.train.config import parse_recipe
from tests.byteformer._data import audio_sample, image_sample
from tests.byteformer.conftest import tiny_model_args
from tests.stand_in_device import check_task_on_cuda


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_image_and_audio_batch_runs_on_cuda(dtype):
    task = build_task(parse_recipe({"model": {"name": "byteformer", **tiny_model_args()},
                                    "task": {"name": "byte_classification", "image_encoding": "tiff"}}))
    transform = task.sample_transform(True)
    batch = task.collate([transform(image_sample(0)), transform(audio_sample(1)), transform(image_sample(2))])
    outs = check_task_on_cuda(task, batch, dtype)
    assert {"correct_image", "count_audio"} <= set(outs["eval"])
