"""The model: SAM's names and outputs (segment_anything is the reference), checkpoint errors, CLIP head."""

from __future__ import annotations

import pytest
import torch

from corefm.errors import CheckpointError
from projects.sam_clip.model import SamClipModel, build_sam, named_config


def _normalise(images: torch.Tensor, cfg) -> torch.Tensor:
    return (images - torch.tensor(cfg.pixel_mean)[:, None, None]) / torch.tensor(cfg.pixel_std)[:, None, None]


def test_state_dict_names_and_shapes_equal_segment_anything_vit_b():
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        ours = SamClipModel(named_config("vit_b"))
        ref = sam_model_registry["vit_b"]()
    ref_state = ref.state_dict()
    assert {k: v.shape for k, v in ours.sam_state_dict().items()} == {k: v.shape for k, v in ref_state.items()}
    assert all(k.startswith("clip_head.") for k in set(ours.state_dict()) - set(ref_state))
    clip_blocks = sum(p.numel() for n, p in ours.named_parameters() if n.startswith("clip_head.blocks."))
    assert clip_blocks == 3 * sum(p.numel() for p in ref.image_encoder.blocks[-1].parameters())


def test_sam_checkpoint_loads_and_masks_equal_segment_anything(tmp_path):
    cfg = named_config("tiny")
    sam = build_sam(cfg).eval()
    torch.save(sam.state_dict(), tmp_path / "sam.pth")
    model = SamClipModel(cfg).eval()
    model.load_sam_checkpoint(tmp_path / "sam.pth")
    image = torch.rand(3, 32, 32) * 255
    points = torch.tensor([[[10.0, 12.0]], [[20.0, 5.0]]])
    labels = torch.ones(2, 1, dtype=torch.int64)
    boxes = torch.tensor([[2.0, 3.0, 20.0, 25.0], [8.0, 8.0, 30.0, 30.0]])
    with torch.no_grad():
        ref_pts = sam([{"image": image, "original_size": (32, 32), "point_coords": points, "point_labels": labels}],
                      multimask_output=True)[0]["low_res_logits"]
        ref_box = sam([{"image": image, "original_size": (32, 32), "boxes": boxes}], multimask_output=False)[0]["low_res_logits"]
        emb = model.image_embeddings(model.encode(_normalise(image, cfg)[None]))
        ours_pts, _ = model.decode(emb, points, labels, multimask=True)
        ours_box, _ = model.decode(emb, boxes=boxes)
    assert ours_pts.shape == ref_pts.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours_pts, ref_pts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_box, ref_box, atol=1e-5, rtol=1e-5)
    # and our SAM part round-trips into segment_anything
    fresh = build_sam(cfg)
    fresh.load_state_dict(model.sam_state_dict())


def test_clip_head_is_initialised_from_the_last_backbone_block(tmp_path):
    cfg = named_config("tiny")
    torch.save(build_sam(cfg).state_dict(), tmp_path / "sam.pth")
    model = SamClipModel(named_config("tiny", sam_checkpoint=str(tmp_path / "sam.pth")))
    last = model.image_encoder.blocks[-1].state_dict()
    assert len(model.clip_head.blocks) == 3
    for blk in model.clip_head.blocks:
        for k, v in blk.state_dict().items():
            assert torch.equal(v, last[k]), k
    assert not any(p.requires_grad for p in model.prompt_encoder.parameters())


def test_wrong_architecture_checkpoint_names_the_keys(tmp_path):
    torch.save(build_sam(named_config("tiny", depth=3, global_attn_indexes=[2])).state_dict(), tmp_path / "a.pth")
    model = SamClipModel(named_config("tiny"))
    with pytest.raises(CheckpointError, match=r"14 missing: image_encoder\.blocks\.3\.attn"):
        model.load_sam_checkpoint(tmp_path / "a.pth")
    torch.save(build_sam(named_config("tiny", embed_dim=48)).state_dict(), tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*image_encoder\.blocks\.0\.attn\.qkv\.weight \(144, 48\) vs \(192, 64\)"):
        model.load_sam_checkpoint(tmp_path / "b.pth")
    (tmp_path / "c.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        model.load_sam_checkpoint(tmp_path / "c.pth")


def test_forward_shapes_and_other_resolutions():
    model = SamClipModel(named_config("tiny")).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out["tokens"].shape == (2, 8, 8, 64) and out["sam"].shape == (2, 32, 8, 8) and out["clip"].shape == (2, 64)
    # the CLIP side runs at other resolutions (position embedding resized), densely too
    tokens = model.encode(torch.randn(1, 3, 48, 48))
    assert model.clip_embed(tokens, dense=True).shape == (1, 12, 12, 64)


def test_clip_pool_last_pools_the_dense_features():
    model = SamClipModel(named_config("tiny", clip_pool_last=True)).eval()
    tokens = model.encode(torch.randn(2, 3, 32, 32))
    with torch.no_grad():
        dense = model.clip_embed(tokens, dense=True)
        torch.testing.assert_close(model.clip_embed(tokens), dense.amax(dim=(1, 2)))


@pytest.mark.parametrize("grid", [32, 48])  # the trained resolution, and another (resolution stage)
def test_batched_decoding_equals_segment_anythings_decoder_image_by_image(grid):
    """decode_batch and the SAM teacher decode B images x K prompts in one pass; segment_anything's own
    MaskDecoder.forward, one image at a time (SamClipModel.decode), is the reference."""
    from projects.sam_clip.teachers import SamTeacher

    torch.manual_seed(0)
    cfg = named_config("tiny")
    model = SamClipModel(cfg).eval()
    images = _normalise(torch.rand(3, 3, grid, grid) * 255, cfg)
    points = torch.rand(3, 2, 1, 2) * grid
    labels = torch.ones(3, 2, 1, dtype=torch.int64)
    corners = torch.rand(3, 2, 2, 2) * grid
    boxes = torch.cat([corners.amin(2), corners.amax(2)], dim=-1)
    with torch.no_grad():
        emb = model.image_embeddings(model.encode(images))
        pts = model.decode_batch(emb, points, labels)
        box = model.decode_batch(emb, boxes=boxes)
        for i in range(3):
            ref_pts, _ = model.decode(emb[i:i + 1], points[i], labels[i])
            ref_box, _ = model.decode(emb[i:i + 1], boxes=boxes[i])
            torch.testing.assert_close(pts[i], ref_pts[:, 0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(box[i], ref_box[:, 0], rtol=1e-4, atol=1e-5)
    if grid != cfg.img_size:
        return
    teacher = SamTeacher.__new__(SamTeacher)  # the teacher's decoding on the same weights
    teacher.sam = build_sam(cfg).eval()
    teacher.sam.load_state_dict(model.sam_state_dict())
    with torch.no_grad():
        both = teacher.predict(images, points, labels, boxes)
    torch.testing.assert_close(both, torch.cat([pts, box], dim=1), rtol=1e-4, atol=1e-5)
