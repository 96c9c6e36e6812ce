"""Experts on real images: Otsu, Canny, Haar faces, stereo SGBM, and transformers pipelines built here."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from corefm.data import DataError, ShardWriter, load_manifest
from corefm.data.shards import iter_shard
from projects.clip_pseudo.data.experts import build_expert, build_experts

import cv2


def _fashion(i: int = 0) -> Image.Image:
    from corefm.data.image_sets import fashion_mnist

    (images, _), _, _ = fashion_mnist()
    return Image.fromarray(images[i])


def test_otsu_separates_silhouettes_both_polarities():
    expert = build_expert("otsu-seg")
    img = _fashion(0)  # an ankle boot, bright on black
    mask = expert(img)
    arr = np.asarray(img)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert arr[mask == 1].mean() > 4 * arr[mask == 0].mean() and 0.2 < mask.mean() < 0.8
    # a dark disc drawn on white (clip-art polarity): the disc is the foreground
    yy, xx = np.mgrid[:40, :40]
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2) < 100
    drawn = np.where(disc, 30, 240).astype(np.uint8)
    assert (expert(Image.fromarray(drawn)) == disc).all()
    with pytest.raises(ValueError, match="flat image"):
        expert(Image.new("L", (8, 8), 7))


def test_canny_edges_on_a_photo():
    from sklearn.datasets import load_sample_images

    edges = build_expert("canny:50-150")(Image.fromarray(load_sample_images().images[0]))
    assert edges.dtype == np.uint8 and set(np.unique(edges)) <= {0, 255}
    assert 0.01 < (edges > 0).mean() < 0.3
    assert build_expert("canny").version.startswith(f"opencv-{cv2.__version__}")


def test_haar_finds_the_astronauts_face():
    import skimage.data as skimage_data
    expert = build_expert("haar-face")
    label = expert(Image.fromarray(skimage_data.astronaut()))
    assert label["width"] == label["height"] == 512 and label["boxes"]
    # Eileen Collins' face is around x 170-260, y 60-150 in this photo
    assert any(150 < (x0 + x1) / 2 < 280 and 40 < (y0 + y1) / 2 < 180 for x0, y0, x1, y1 in label["boxes"])
    assert json.loads(expert.encode(label))["labels"][0] == "frontalface_default"
    with pytest.raises(DataError, match="no Haar cascade 'toaster'"):
        build_expert("haar:toaster")


def test_stereo_depth_matches_ground_truth_disparity(tmp_path):
    import skimage.data as skimage_data
    left, right, disparity = skimage_data.stereo_motorcycle()
    depth = build_expert("stereo-depth")(Image.fromarray(left), {"right.png": Image.fromarray(right)})
    assert depth.dtype == np.uint16 and depth.shape == disparity.shape
    ok = (depth > 0) & np.isfinite(disparity)
    assert ok.mean() > 0.6
    assert np.corrcoef(depth[ok].astype(float), disparity[ok])[0, 1] > 0.9  # larger value = nearer
    # through the tool: a sample without its right view gets an expert error, not a lost sample
    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()
    small_l, small_r = left[::4, ::4].copy(), right[::4, ::4].copy()
    with ShardWriter(tmp_path / "in", prefix="train") as w:
        w.write({"__key__": "pair", "png": png(small_l), "right.png": png(small_r), "txt": "a motorcycle"})
        w.write({"__key__": "single", "png": png(small_l), "txt": "a motorcycle"})
    from projects.clip_pseudo.data.pseudo_label import run

    report = run(tmp_path / "in", tmp_path / "out", "stereo-depth:32", workers=1)
    assert report["samples_out"] == 2 and report["expert_errors"] == {"stereo-depth": 1}
    assert "no .right.png" in report["first_errors"]["stereo-depth"]


@pytest.fixture(scope="module")
def tiny_hf_models(tmp_path_factory):
    """A randomly initialised SegFormer and GLPN, saved like Hub checkpoints (config + safetensors)."""
    import transformers
    root = tmp_path_factory.mktemp("hf")
    common = dict(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                  patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                  decoder_hidden_size=16)
    labels = {0: "background", 1: "object", 2: "edge"}
    seg = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(
        **common, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()}))
    seg.save_pretrained(root / "seg")
    transformers.SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "seg")
    depth = transformers.GLPNForDepthEstimation(transformers.GLPNConfig(**common))
    depth.save_pretrained(root / "depth")
    transformers.GLPNImageProcessor().save_pretrained(root / "depth")
    det = transformers.YolosForObjectDetection(transformers.YolosConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=[64, 64],
        num_detection_tokens=5, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()}))
    det.save_pretrained(root / "det")
    transformers.YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(root / "det")
    return root


def test_transformers_pipelines_as_experts(tiny_hf_models, fashion_it, tmp_path):
    seg, depth, det = build_experts(f"hf-seg:{tiny_hf_models / 'seg'},hf-depth:{tiny_hf_models / 'depth'},"
                                    f"hf-det:{tiny_hf_models / 'det'}")
    img = _fashion(1).resize((96, 64))  # GLPN's processor rounds sizes down to multiples of 32
    classes = seg(img)
    assert classes.shape == (64, 96) and set(np.unique(classes)) <= {0, 1, 2}  # every pixel gets a class
    d = depth(img)
    assert d.shape == (64, 96) and d.dtype == np.uint16 and d.min() >= 1 and d.max() == 65535
    det.threshold = 0.0  # random weights score low; every detection token then yields a box
    boxes = det(img)
    assert (boxes["width"], boxes["height"]) == (96, 64) and len(boxes["boxes"]) == len(boxes["labels"]) > 0
    assert all(0 <= x0 <= x1 <= 96 and 0 <= y0 <= y1 <= 64 for x0, y0, x1, y1 in boxes["boxes"])
    assert seg.version.startswith("transformers-") and "@" in seg.version
    assert build_expert(f"hf-seg:{tiny_hf_models / 'seg'}").version == seg.version  # same weights, same version
    # in the tool, two worker processes each load the model themselves
    from projects.clip_pseudo.data.pseudo_label import run

    report = run(fashion_it / "val", tmp_path / "out", f"hf-seg:{tiny_hf_models / 'seg'}", workers=2)
    assert report["samples_out"] == 384 and not report["expert_errors"]
    sample = next(iter_shard(str(tmp_path / "out" / load_manifest(tmp_path / "out").shards[0].name)))
    assert json.loads(sample["json"])["pseudo_labels"]["hf-seg"]["version"] == seg.version
    assert Image.open(io.BytesIO(sample["seg.png"])).size == (28, 28)


def test_unreachable_hub_model_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="neither a local folder nor reachable"):
        build_expert("hf-depth:some-org/no-such-model")


def test_user_experts_load_by_import_and_unfinished_ones_are_refused():
    assert build_expert("import:tests.clip_pseudo.experts_fixture.Flaky").name == "flaky"
    with pytest.raises(DataError, match=r"import:tests.clip_pseudo.experts_fixture.Unfinished: cannot load .*label"):
        build_expert("import:tests.clip_pseudo.experts_fixture.Unfinished")
    with pytest.raises(DataError, match="cannot load the expert class"):
        build_expert("import:tests.clip_pseudo.experts_fixture.Missing")


def test_mtcnn_face_boxes_through_the_pseudo_label_tool(tmp_path):
    """A neural expert whose weights ship in an installed package (facenet-pytorch's MTCNN), through
    `corefm clip pseudo-label`, on real images where it means something: scikit-image's LFW subset
    (100 face crops, then 100 non-face patches) and the astronaut photo."""
    from tests.conftest import require_installed
    import importlib.util

    require_installed(importlib.util.find_spec("facenet_pytorch") is not None, "facenet-pytorch (launch/setup.sh)")
    import skimage.data as skimage_data

    from projects.clip_pseudo.data.pseudo_label import run as pseudo_label

    faces = skimage_data.lfw_subset()
    pick = list(range(0, 100, 10)) + list(range(100, 200, 10))  # 10 faces, 10 non-faces
    with ShardWriter(tmp_path / "in", max_samples_per_shard=10, producer={"name": "test", "version": "1"}) as w:
        for i in pick:
            buf = io.BytesIO()
            Image.fromarray((faces[i] * 255).astype(np.uint8)).save(buf, format="PNG")
            w.write({"__key__": f"lfw{i:03d}", "png": buf.getvalue(), "txt": "a face" if i < 100 else "a patch"})
    pseudo_label(tmp_path / "in", tmp_path / "out", "mtcnn-face", workers=1)
    found = {}
    for shard in sorted((tmp_path / "out").glob("*.tar")):
        for s in iter_shard(str(shard)):
            label = json.loads(s["boxes.json"])
            found[int(s["__key__"][3:])] = label
            assert json.loads(s["json"])["pseudo_labels"]["mtcnn-face"]["version"].startswith("facenet-pytorch-2.6.0/mtcnn")
    hits = {i: bool(label["boxes"]) for i, label in found.items()}
    assert sum(hits[i] for i in pick[:10]) >= 8 and sum(hits[i] for i in pick[10:]) <= 1
    for i in pick[:10]:
        for x0, y0, x1, y1 in found[i]["boxes"]:
            assert 0 <= x0 < x1 <= 25 and 0 <= y0 < y1 <= 25  # in the 25 x 25 crop's pixels
    label = build_expert("mtcnn-face")(Image.fromarray(skimage_data.astronaut()))
    assert len(label["boxes"]) == 1 and label["labels"] == ["face"] and label["scores"][0] > 0.99
    x0, y0, x1, y1 = label["boxes"][0]
    assert 150 < (x0 + x1) / 2 < 280 and 40 < (y0 + y1) / 2 < 180  # Eileen Collins' face
    assert not build_expert("mtcnn-face")(Image.fromarray(skimage_data.coffee()))["boxes"]
