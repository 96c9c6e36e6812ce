"""End to end through the `corefm` command: SAM teacher on ground truth, export, stored teacher
outputs, the three SAM-CLIP stages on 2 ranks, eval, release (tiny sizes, a few steps each)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.util import ROOT, corefm_cmd, final, losses, run

pytestmark = pytest.mark.slow

CONFIGS = ROOT / "projects/sam_clip/configs"


def _train(recipe: str, run_dir, **sets):
    base = {"run_dir": run_dir, "train.max_steps": 4, "train.micro_batch_size": 8, "log.every": 2,
            "log.progress": False, "eval.every": 0, "eval.max_batches": 2, "checkpoint.every": 0,
            "schedule.warmup_steps": 1, "data.shuffle_buffer": 50, "data.num_workers": 1}
    args = sum((["--set", f"{k}={v}"] for k, v in {**base, **sets}.items()), [])
    r = run(corefm_cmd("train", str(CONFIGS / recipe), "--nproc", "2", *args))
    assert r.returncode == 0, r.stderr[-3000:]
    steps = losses(run_dir)
    assert set(steps) >= {2, 4} and all(v == v for v in steps.values())
    return final(run_dir)


@pytest.fixture(scope="module")
def teacher_data(fashion_seg, clip_teacher_dir, tmp_path_factory):
    """A SAM teacher trained on ground truth for a few steps, exported, and stored teacher outputs."""
    from projects.sam_clip.model import build_sam
    from projects.sam_clip.teachers import load_sam_config

    tmp = tmp_path_factory.mktemp("e2e")
    sam_run, sam_pth = tmp / "sam", tmp / "export" / "sam.pth"
    result = _train("fashion_sam_teacher.yaml", sam_run, **{"data.train": fashion_seg / "train",
                                                            "data.val": fashion_seg / "val"})
    assert {"miou_gt_point", "miou_gt_box"} <= set(result["eval"])
    r = run(corefm_cmd("sam-clip", "export-sam", str(sam_run), str(sam_pth)))
    assert r.returncode == 0, r.stderr[-3000:]
    build_sam(load_sam_config(sam_pth)).load_state_dict(torch.load(sam_pth, weights_only=True))

    from projects.sam_clip.teacher_outputs import run as teacher_outputs

    data = tmp / "data"
    teacher_outputs(fashion_seg / "train", data / "clip_set", clip=str(clip_teacher_dir), shards="0:2")
    teacher_outputs(fashion_seg / "train", data / "sam_set", sam=str(sam_pth), shards="2:4", samples_per_shard=16)
    r = run(corefm_cmd("sam-clip", "teacher-outputs", "--in", str(fashion_seg / "val"), "--out", str(data / "val"),
                       "--clip", str(clip_teacher_dir), "--sam", str(sam_pth)))
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, sam_pth, data


def test_three_stages_on_two_ranks(teacher_data, clip_teacher_dir):
    tmp, sam_pth, data = teacher_data
    teachers = {"task.clip_teacher": clip_teacher_dir, "task.sam_teacher": sam_pth, "data.val": data / "val"}
    probe = _train("fashion_probe.yaml", tmp / "probe", **teachers, **{
        "model.sam_checkpoint": sam_pth, "data.train": data / "clip_set"})
    assert {"clip_cosine", "zero_shot_top1"} <= set(probe["eval"])
    # ZeRO-1 consolidation alone drops frozen parameters: the export must still hold SAM's, unchanged.
    exported = load_file(str(tmp / "probe/model.safetensors"))
    sam = torch.load(sam_pth, weights_only=True)
    assert sam.keys() <= exported.keys()
    assert all(torch.equal(exported[k], v.float()) for k, v in sam.items())
    mix = f"{data / 'clip_set'}::{data / 'sam_set'}"
    # ZeRO-3 partitions the frozen parameters too; consolidation must still give them back whole.
    _train("fashion_probe.yaml", tmp / "probe_zero3", **teachers, **{
        "model.sam_checkpoint": sam_pth, "data.train": data / "clip_set", "deepspeed.zero_stage": 3})
    exported3 = load_file(str(tmp / "probe_zero3/model.safetensors"))
    assert exported3.keys() == exported.keys()
    assert all(torch.equal(exported3[k], v.float()) for k, v in sam.items())
    # rehearsal: a fixed share of each set in every batch (data.mix: batch, one worker per source)
    distill = _train("fashion_distill.yaml", tmp / "distill", **teachers, **{
        "model.init_checkpoint": tmp / "probe/model.safetensors", "data.train": mix, "data.num_workers": 2})
    assert {"clip_cosine", "miou_target_point", "miou_gt_box"} <= set(distill["eval"])
    # ZeRO-3 runs both branches on every rank (formerly refused); the random mix leaves some batches of
    # one kind only, where a rank runs that branch on a zero row
    _train("fashion_distill.yaml", tmp / "distill_zero3", **teachers, **{
        "model.init_checkpoint": tmp / "probe/model.safetensors", "data.train": mix, "data.mix": "shards",
        "deepspeed.zero_stage": 3, "train.micro_batch_size": 2})
    _train("fashion_resolution.yaml", tmp / "resolution", **teachers, **{
        "model.init_checkpoint": tmp / "distill/model.safetensors", "data.train": mix, "data.num_workers": 2})


def test_eval_and_release(teacher_data, fashion_seg):
    from projects.sam_clip.evaluate import load_student
    from projects.sam_clip.model import build_sam
    from projects.sam_clip.teachers import load_sam_config

    tmp, _, _ = teacher_data
    res_dir = tmp / "resolution"
    if not (res_dir / "model.safetensors").is_file():
        pytest.skip("needs test_three_stages_on_two_ranks")
    r = run(corefm_cmd("sam-clip", "eval", str(res_dir), "--data", str(fashion_seg / "val"), "--teachers",
                       "--max-samples", "64", "--json", str(res_dir / "sam_clip_eval.json")))
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((res_dir / "sam_clip_eval.json").read_text())
    assert {"zero_shot_top1", "semseg_miou", "semseg_miou_fg", "miou_gt_point", "miou_target_box",
            "teacher_clip_zero_shot_top1", "teacher_sam_miou_gt_box"} <= set(metrics)
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k != "samples")

    rel = tmp / "release"
    r = run(corefm_cmd("release", str(res_dir), "--out", str(rel)))
    assert r.returncode == 0, r.stderr[-3000:]
    card = (rel / "README.md").read_text()
    assert "SAM-CLIP" in card and "zero_shot_top1" in card and (rel / "clip_teacher/open_clip_config.json").is_file()
    assert "| img_size | 32 |" in card  # the resolved preset, not the dataclass defaults
    _, a = load_student(res_dir)
    _, b = load_student(rel)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(images)["clip"], b(images)["clip"])
    build_sam(load_sam_config(rel / "sam.pth")).load_state_dict(torch.load(rel / "sam.pth", weights_only=True))
