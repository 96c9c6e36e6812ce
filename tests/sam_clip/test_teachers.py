"""Teachers, stored teacher outputs (round trip, versions) and online distillation batches."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from corefm.data import DataConfig, build_eval_loader, load_manifest
from corefm.data.shards import iter_shard
from corefm.errors import CheckpointError, ConfigError
from projects.sam_clip.model import SamClipModel, named_config
from projects.sam_clip.task import SamClipTask, SamClipTaskConfig
from projects.sam_clip.teachers import ClipTeacher, SamTeacher
from tests.sam_clip.conftest import make_sam_teacher


@pytest.fixture(scope="module")
def stored(fashion_seg, clip_teacher_dir, sam_teacher_pth, tmp_path_factory):
    from projects.sam_clip.teacher_outputs import run

    out = tmp_path_factory.mktemp("teacher_outputs")
    report = run(fashion_seg / "val", out, clip=str(clip_teacher_dir), sam=str(sam_teacher_pth), shards="0:2",
                 batch_size=16)
    return out, report


def test_teacher_outputs_round_trip(stored, clip_teacher_dir, sam_teacher_pth):
    out, report = stored
    assert report["samples"] == report["clip"] == 64 and report["sam"] + report["no_mask"] == 64
    manifest = load_manifest(out)
    assert manifest.total_samples == 64 and {"clip_emb.npy", "sam_masks.npy", "sam_prompts.json"} <= set(manifest.keys)
    clip_t, sam_t = ClipTeacher(str(clip_teacher_dir)), SamTeacher(sam_teacher_pth)
    assert manifest.producer["teachers"]["clip"]["version"] == clip_t.version
    assert manifest.producer["teachers"]["sam"]["version"] == sam_t.version
    raw = next(iter_shard(str(out / manifest.shards[0].name)))
    image = Image.open(io.BytesIO(raw["png"])).convert("RGB")
    emb = np.load(io.BytesIO(raw["clip_emb.npy"]))
    np.testing.assert_allclose(emb, clip_t.encode_image(clip_t.preprocess(image)[None])[0].numpy(), atol=1e-5)
    from projects.sam_clip.data import sam_input

    prompts = json.loads(raw["sam_prompts.json"])
    masks = np.load(io.BytesIO(raw["sam_masks.npy"]))
    logits = sam_t.predict(sam_input(image, 32, sam_t.cfg.pixel_mean, sam_t.cfg.pixel_std)[None],
                           torch.tensor([prompts["points"]]), torch.ones(1, 1, 1, dtype=torch.int64),
                           torch.tensor([prompts["boxes"]]))
    assert masks.shape == (2, 32, 32) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, (logits[0] > 0).numpy().astype(np.uint8))
    assert json.loads(raw["json"])["teachers"]["sam"]["version"] == sam_t.version


def test_stored_outputs_train_and_wrong_version_is_refused(stored, clip_teacher_dir, sam_teacher_pth, tmp_path):
    out, _ = stored
    cfg = SamClipTaskConfig(stage="distill", clip_source="stored", sam_source="stored", clip_teacher=str(clip_teacher_dir),
                            sam_teacher=str(sam_teacher_pth))
    task = SamClipTask(cfg, SamClipModel(named_config("tiny")), (str(out),))
    loader = build_eval_loader(str(out), DataConfig(num_workers=0), rank=0, world_size=1, batch_size=8,
                               map_fn=task.sample_transform(True), collate_fn=task.collate)
    batch = next(iter(loader))
    assert batch["clip_target"].shape == (8, 64) and batch["sam_target"].shape[1:] == (2, 32, 32)
    out_ = task(batch)
    out_["loss"].backward()
    assert float(out_["loss_clip"]) > 0 and float(out_["loss_sam"]) > 0
    other = make_sam_teacher(tmp_path, seed=1)
    cfg.sam_teacher = str(other)
    with pytest.raises(ConfigError, match="stored sam teacher outputs are from .* version"):
        SamClipTask(cfg, SamClipModel(named_config("tiny")), (str(out),))


def test_online_teachers_and_rehearsal_mix(fashion_seg, clip_teacher_dir, sam_teacher_pth):
    cfg = SamClipTaskConfig(stage="distill", clip_source="online", sam_source="online", clip_teacher=str(clip_teacher_dir),
                            sam_teacher=str(sam_teacher_pth), class_names=["a", "b"])
    task = SamClipTask(cfg, SamClipModel(named_config("tiny")))
    loader = build_eval_loader(str(fashion_seg / "val"), DataConfig(num_workers=0), rank=0, world_size=1,
                               batch_size=4, map_fn=task.sample_transform(False), collate_fn=task.collate)
    batch = next(iter(loader))
    assert batch["clip_teacher_image"].shape == (4, 3, 28, 28)
    out = task(batch)
    assert set(out) == {"loss", "loss_clip", "loss_sam"}
    sums = task(batch, mode="eval")
    metrics = task.eval_metrics({k: float(v) for k, v in sums.items()})
    assert {"clip_cosine", "zero_shot_top1", "miou_target_point", "miou_gt_box"} <= set(metrics)
    # a batch holding only CLIP rows still gives every trainable parameter a (zero) gradient
    clip_only = {k: (v if k.startswith("clip_") else v[:0]) for k, v in batch.items()}
    task.zero_grad()
    task(clip_only)["loss"].backward()
    assert all(p.grad is not None for p in task.parameters() if p.requires_grad)


def test_wrong_teacher_checkpoints(tmp_path, clip_teacher_dir):
    bad = make_sam_teacher(tmp_path, depth=2, global_attn_indexes=[1])
    with pytest.raises(CheckpointError, match=r"SAM teacher .* missing: image_encoder\.blocks\.2\."):
        SamTeacher(bad, "tiny")
    with pytest.raises(CheckpointError, match="no open_clip_config.json"):
        ClipTeacher(str(tmp_path))
    with pytest.raises(ConfigError, match="embeds into 64 dims"):
        SamClipTask(SamClipTaskConfig(clip_source="online", sam_source="none", clip_teacher=str(clip_teacher_dir)),
                    SamClipModel(named_config("tiny", clip_embed_dim=32)))


def test_clip_teacher_from_name_and_checkpoint(clip_teacher_dir, tmp_path):
    """``NAME@FILE``: an open_clip model name (here a config registered with open_clip) + weights."""
    import open_clip
    from safetensors.torch import load_file

    cfg = json.loads((clip_teacher_dir / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "corefm-test-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "configs")
    weights = tmp_path / "w.pt"
    torch.save(load_file(str(clip_teacher_dir / "open_clip_model.safetensors")), weights)
    by_name = ClipTeacher(f"corefm-test-tiny@{weights}")
    by_dir = ClipTeacher(str(clip_teacher_dir))
    images = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(by_name.encode_image(images), by_dir.encode_image(images))
    assert by_name.embed_dim == 64 and by_name.version != by_dir.version  # versions hash the files given
    bad = {k: v for k, v in load_file(str(clip_teacher_dir / "open_clip_model.safetensors")).items()
           if not k.startswith("visual.transformer.resblocks.2.")}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"does not fit open_clip model corefm-test-tiny: .*resblocks\.2"):
        ClipTeacher(f"corefm-test-tiny@{tmp_path / 'bad.pt'}")


def test_per_sample_version_check_in_the_workers():
    from corefm.data.errors import DataError
    from projects.sam_clip.data import SampleSpec, SampleTransform

    spec = SampleSpec(sam_size=32, mask_size=32, clip_size=32, clip_source="stored", sam_source="none", embed_dim=4,
                      pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, versions={"clip": "aaaa"})
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, format="PNG")
    raw = {"__key__": "k", "png": buf.getvalue(), "json": json.dumps({"teachers": {"clip": {"version": "bbbb"}}}).encode()}
    with pytest.raises(DataError, match="version bbbb, the recipe's clip teacher is aaaa"):
        SampleTransform(spec, train=True)(raw)
