"""Eval metrics on hand-made tensors and a tiny run folder; the release folder loads back."""

from __future__ import annotations

import json

import pytest
import torch

from projects.sam_clip.evaluate import miou, run_eval, semseg_confusion


def test_semseg_confusion_and_miou():
    text = torch.eye(3)  # background, class 0, class 1 embeddings
    dense = torch.zeros(1, 2, 2, 3)
    dense[0, :, 0, 0] = 1  # left column -> background
    dense[0, :, 1, 2] = 1  # right column -> class 1
    mask = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    conf = semseg_confusion(dense, text, torch.tensor([1]), mask)
    assert conf.tolist() == [[2, 0, 0], [0, 0, 0], [0, 0, 2]]
    assert miou(conf) == 1.0
    conf = semseg_confusion(dense, text, torch.tensor([0]), mask)  # the image's class is 0: right column wrong
    assert miou(conf) == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    fg = semseg_confusion(dense, text, torch.tensor([1]), mask, foreground_only=True)
    assert fg.tolist() == [[0, 0], [0, 2]]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, clip_teacher_dir, sam_teacher_pth, fashion_seg):
    from safetensors.torch import save_file

    from corefm.train.build import build_task
    from corefm.train.config import parse_recipe, recipe_to_dict

    run_dir = tmp_path_factory.mktemp("run")
    raw = {"model": {"name": "sam_clip", "preset": "tiny", "sam_checkpoint": str(sam_teacher_pth)},
           "task": {"name": "sam_clip", "stage": "distill", "clip_source": "online", "sam_source": "online",
                    "clip_teacher": str(clip_teacher_dir), "sam_teacher": str(sam_teacher_pth),
                    "class_names": ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                                    "bag", "ankle boot"]},
           "data": {"train": str(fashion_seg / "train"), "val": str(fashion_seg / "val")}, "run_dir": str(run_dir)}
    recipe = parse_recipe(raw)
    task = build_task(recipe)
    save_file({k: v.contiguous() for k, v in task.model.state_dict().items()}, str(run_dir / "model.safetensors"))
    (run_dir / "recipe.json").write_text(json.dumps(recipe_to_dict(recipe)))
    (run_dir / "final.json").write_text(json.dumps({"step": 0, "loss": 0.0, "eval": {}}))
    return run_dir


def test_eval_reports_student_and_teachers(tiny_run, fashion_seg):
    m = run_eval(tiny_run, str(fashion_seg / "val"), teachers=True, max_samples=32, batch_size=16, workers=0)
    assert m["samples"] == 32
    for key in ("zero_shot_top1", "clip_cosine", "semseg_miou", "miou_gt_point", "miou_gt_box", "miou_target_point",
                "miou_target_box", "teacher_clip_zero_shot_top1", "teacher_sam_miou_gt_point", "semseg_miou_fg"):
        assert key in m, key
    # the student's SAM part is the SAM teacher (loaded from it): identical masks
    assert m["miou_target_point"] == pytest.approx(1.0) and m["miou_target_box"] == pytest.approx(1.0)
    assert m["miou_gt_box"] == pytest.approx(m["teacher_sam_miou_gt_box"])


def test_release_folder_loads_back(tiny_run, tmp_path, capsys):
    from segment_anything.modeling import Sam  # noqa: F401

    from corefm.hub.release import release
    from projects.sam_clip.evaluate import load_student
    from projects.sam_clip.model import build_sam
    from projects.sam_clip.teachers import load_sam_config

    (tiny_run / "sam_clip_eval.json").write_text(json.dumps({"zero_shot_top1": 0.5}))
    out = tmp_path / "rel"
    release(tiny_run, out)
    assert {"model.safetensors", "config.json", "recipe.json", "README.md", "sam.pth", "sam_config.json",
            "clip_teacher", "sam_clip_eval.json"} <= {p.name for p in out.iterdir()}
    assert "| zero_shot_top1 | 0.5 |" in (out / "README.md").read_text()
    _, a = load_student(tiny_run)
    _, b = load_student(out)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    sam = build_sam(load_sam_config(out / "sam.pth"))
    sam.load_state_dict(torch.load(out / "sam.pth", weights_only=True))
