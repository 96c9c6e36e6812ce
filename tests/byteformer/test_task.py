"""byte_classification: samples become the configured file bytes, batches pad and mask, limits hold."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from corefm.data.errors import SkipSample
from corefm.errors import ConfigError
from corefm.train.build import build_task
from corefm.train.config import parse_recipe
from projects.byteformer.encodings import TIFF, sniff
from projects.byteformer.model import PAD
from projects.byteformer.task import collate_bytes
from tests.byteformer._data import audio_sample, image_sample, png_bytes
from tests.byteformer.conftest import tiny_model_args


def task(model: dict | None = None, **task_cfg):
    raw = {"model": {"name": "byteformer", **tiny_model_args(**(model or {}))},
           "task": {"name": "byte_classification", **task_cfg}}
    return build_task(parse_recipe(raw))


@pytest.mark.parametrize("encoding,kind", [("tiff", "tiff"), ("png", "png"), ("jpeg", "jpg"), ("raw", "png")])
def test_image_sample_becomes_a_file_of_that_format(encoding, kind):
    out = task(image_encoding=encoding).sample_transform(False)(image_sample(cls=4))
    data = bytes(out["bytes"])
    assert sniff(data) == kind and out["label"] == 4 and out["modality"] == 0
    Image.open(io.BytesIO(data)).load()  # a real, decodable file
    if encoding == "raw":
        assert data == image_sample()["png"]


def test_fhwc_resize_and_rgb():
    out = task(image_encoding="fhwc", image_size=4, channels=3).sample_transform(False)(image_sample())
    assert len(out["bytes"]) == 4 * 4 * 3


@pytest.mark.parametrize("dtype,per_sample", [("float32", 4), ("int16", 2), ("uint8", 1)])
def test_audio_sample_becomes_a_fixed_length_wav(dtype, per_sample):
    t = task(model={"max_bytes": 20000, "num_classes": 20}, audio_encoding="wav", wav_dtype=dtype, audio_seconds=0.5,
             audio_label_offset=10)
    out = t.sample_transform(True)(audio_sample(cls=7))
    assert sniff(bytes(out["bytes"])) == "wav" and out["modality"] == 1 and out["label"] == 17
    assert 0 < len(out["bytes"]) - per_sample * 4000 < 60


def test_mp3_audio_and_raw_wav():
    t = task(audio_encoding="mp3", audio_seconds=0.5)
    assert sniff(bytes(t.sample_transform(False)(audio_sample())["bytes"])) == "mp3"
    raw = task(audio_encoding="raw").sample_transform(False)(audio_sample())
    assert bytes(raw["bytes"]) == audio_sample()["wav"]


def test_augmentation_is_seeded_by_the_global_rng():
    t = task(image_encoding="fhwc", max_shift=2, hflip=True).sample_transform(True)
    np.random.seed(5)
    a = t(image_sample())["bytes"]
    np.random.seed(5)
    assert np.array_equal(t(image_sample())["bytes"], a)
    plain = task(image_encoding="fhwc").sample_transform(False)(image_sample())["bytes"]
    assert any(not np.array_equal(t(image_sample())["bytes"], plain) for _ in range(5))


def test_byte_transforms_run_after_the_encoding():
    spec = [{"name": "permute", "seed": 1}]
    plain = task(image_encoding="tiff").sample_transform(False)(image_sample())["bytes"]
    permuted = task(image_encoding="tiff", byte_transforms=spec).sample_transform(False)(image_sample())["bytes"]
    from projects.byteformer.byte_transforms import Permute

    assert np.array_equal(permuted, Permute(1)(plain)) and sniff(bytes(permuted)) is None


def test_too_long_and_unusable_samples_are_skipped_with_a_reason():
    t = task(model={"max_bytes": 64}, image_encoding="tiff").sample_transform(True)
    with pytest.raises(SkipSample, match=r"exceed max_bytes \(64\)"):
        t(image_sample())
    ok = task().sample_transform(True)
    with pytest.raises(SkipSample, match="undecodable png"):
        ok({"__key__": "x", "png": b"\x89PNG\r\n\x1a\n broken", "cls": b"1"})
    with pytest.raises(SkipSample, match="no image or audio"):
        ok({"__key__": "x", "txt": b"hello", "cls": b"1"})
    with pytest.raises(SkipSample, match="no 'cls'"):
        ok({"__key__": "x", "png": png_bytes()})
    with pytest.raises(SkipSample, match="empty input"):
        task(image_encoding="raw").sample_transform(True)({"__key__": "x", "png": b"", "cls": b"1"})


def test_bad_task_config_is_one_line():
    with pytest.raises(ConfigError, match="not an image encoding"):
        task(image_encoding="wav")
    with pytest.raises(ConfigError, match="unknown byte encoding"):
        task(audio_encoding="ogg")
    with pytest.raises(ConfigError, match="exceeds model.max_bytes"):
        task(max_bytes=10**6)


def test_collate_pads_with_pad_and_keeps_lengths():
    samples = [{"bytes": np.array([1, 2, 3], np.uint8), "modality": 0, "label": 1},
               {"bytes": np.array([255], np.uint8), "modality": 1, "label": 2}]
    b = collate_bytes(samples)
    assert b["bytes"].tolist() == [[1, 2, 3], [255, PAD, PAD]] and b["lengths"].tolist() == [3, 1]
    assert b["label"].tolist() == [1, 2] and b["modality"].tolist() == [0, 1]


def test_forward_train_and_eval_sums_per_modality():
    t = task(model={"num_classes": 20}, audio_label_offset=10, audio_seconds=0.25)
    fn = t.sample_transform(True)
    batch = collate_bytes([fn(image_sample(0, 1)), fn(audio_sample(1, 2)), fn(image_sample(2, 3))])
    out = t(batch)
    assert out["loss"].requires_grad and out["num_tokens"] == batch["lengths"].sum()
    out["loss"].backward()
    with torch.no_grad():
        sums = {k: float(v) for k, v in t(batch, mode="eval").items()}
    assert sums["count"] == 3 and sums["count_image"] == 2 and sums["count_audio"] == 1
    metrics = t.eval_metrics(sums)
    assert set(metrics) >= {"accuracy", "loss", "samples", "accuracy_image", "accuracy_audio"}
    assert "accuracy_audio" not in t.eval_metrics({**sums, "count_audio": 0.0, "count_image": 3.0})


def test_task_output_independent_of_batch_padding():
    """A longer neighbour in the batch (more padding for the others) changes nothing."""
    t = task().eval()
    fn = t.sample_transform(False)
    pair = [fn(image_sample(0)), fn(image_sample(1))]
    long = {"bytes": TIFF()(Image.new("L", (40, 40))), "modality": 0, "label": 0}
    with torch.no_grad():
        alone = collate_bytes(pair)
        mixed = collate_bytes(pair + [long])
        assert mixed["bytes"].shape[1] > alone["bytes"].shape[1]
        torch.testing.assert_close(t.model(mixed["bytes"], mixed["lengths"])[:2],
                                   t.model(alone["bytes"], alone["lengths"]), atol=1e-5, rtol=0)
