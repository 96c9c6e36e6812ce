"""SAM-CLIP on a (stand-in) CUDA device: the task, its online teachers and classifier stay on the GPU."""

from __future__ import annotations

import pytest
import torch

from corefm.data import DataConfig, build_eval_loader
from corefm.train.build import build_task
from corefm.train.config import parse_recipe
from tests.stand_in_device import check_task_on_cuda

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


@pytest.fixture(autouse=True)
def _own_teachers(monkeypatch):
    # Teachers are cached per process and the task moves them to its device: these fake-CUDA ones
    # must not leak into the other tests.
    from projects.sam_clip import teachers

    monkeypatch.setattr(teachers, "_CACHE", {})


def _task_and_batch(fashion_seg, **task):
    recipe = parse_recipe({"model": {"name": "sam_clip", "preset": "tiny", "clip_embed_dim": 64},
                           "task": {"name": "sam_clip", **task}})
    built = build_task(recipe)
    loader = build_eval_loader(str(fashion_seg / "val"), DataConfig(num_workers=0), rank=0, world_size=1,
                               batch_size=6, map_fn=built.sample_transform(True), collate_fn=built.collate)
    return built, next(iter(loader))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_distill_with_online_teachers_runs_on_cuda(fashion_seg, clip_teacher_dir, sam_teacher_pth, dtype):
    task, batch = _task_and_batch(fashion_seg, stage="distill", clip_source="online", sam_source="online",
                                  clip_teacher=str(clip_teacher_dir), sam_teacher=str(sam_teacher_pth),
                                  class_names=CLASSES)
    assert len(batch["clip_image"]) and len(batch["sam_image"])  # both branches run
    outs = check_task_on_cuda(task, batch, dtype)
    assert {"zs_correct", "iou_gt_point_sum", "iou_target_box_count"} <= set(outs["eval"])


def test_sam_teacher_stage_on_ground_truth_runs_on_cuda(fashion_seg):
    task, batch = _task_and_batch(fashion_seg, stage="sam_gt", sam_source="gt", clip_source="none")
    check_task_on_cuda(task, batch)
