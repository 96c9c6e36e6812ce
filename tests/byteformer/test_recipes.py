"""Every ByteFormer recipe builds its model and task and runs a real sample through both."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corefm.train.build import build_task
from corefm.train.config import load_recipe
from tests.byteformer._data import wav_bytes

RECIPES = sorted((Path(__file__).resolve().parents[2] / "projects/byteformer/configs").glob("*.yaml"))


def photo(size: int = 28, mode: str = "L") -> bytes:
    y, x = np.mgrid[0:size, 0:size]
    img = Image.fromarray(((x * 7 + y * 3) % 256).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_a_sample(path):
    recipe = load_recipe(path)
    task = build_task(recipe)
    if recipe.task_name == "classification":  # the pixel-ViT baseline
        assert recipe.model.width == load_recipe(path.with_name("fashion_tiff.yaml")).model.dim
        batch = task.collate([task.sample_transform(True)({"png": photo(), "cls": b"3"})] * 2)
        assert task(batch)["loss"].isfinite()
        return
    samples = []
    if "speech" not in path.stem:
        samples.append({"__key__": "i", "png": photo(), "cls": b"3"})
    if "speech" in path.stem or "joint" in path.stem:
        samples.append({"__key__": "a", "wav": wav_bytes(0.8), "cls": b"4"})
    fn = task.sample_transform(True)
    out = [fn(s) for s in samples]
    if "imagenet" in path.stem:  # full size: check the encoding fits, skip the 46-GFLOP forward
        assert 150_528 < len(out[0]["bytes"]) <= recipe.model.max_bytes
        return
    with torch.no_grad():
        result = task(task.collate(out), mode="eval")
    assert result["count"] == len(samples)


def test_imagenet_recipe_is_the_papers():
    """CoreNet's projects/byteformer/imagenet_file_encodings/encoding_type=TIFF.yaml: global batch 48 x 8
    GPUs x accumulation 2 = 768, 300 epochs, AdamW 1e-3 -> 2e-5 (0.02x) cosine with 7,500 warm-up
    iterations, weight decay 0.05, label smoothing 0.1, RandomResizedCrop + flip + RandAugment +
    RandomErase 0.25 at 224 (eval: 256 then a 224 centre crop), kernel 32, windows of 128, EMA 1e-4."""
    r = load_recipe(Path(__file__).resolve().parents[2] / "projects/byteformer/configs/imagenet_tiff.yaml")
    ranks = 8  # the recipe's header: --nproc 8
    assert r.train.micro_batch_size * r.train.grad_accum * ranks == 768
    assert r.train.max_steps == -(-1_281_167 * 300 // 768)  # 300 epochs of ImageNet-1k's training set
    assert (r.optim.lr, r.optim.weight_decay) == (1e-3, 0.05)
    assert (r.schedule.name, r.schedule.warmup_steps, r.schedule.min_lr_ratio) == ("cosine", 7500, 0.02)
    t = r.task
    assert (t.image_size, t.eval_resize, t.random_resized_crop, t.hflip, t.rand_augment, t.random_erase) == \
        (224, 256, True, True, True, 0.25)
    assert t.label_smoothing == 0.1 and t.image_encoding == "tiff"
    assert (r.model.kernel_size, r.model.window_size, r.model.init) == (32, 128, "corenet")
    assert r.ema.momentum == 1e-4  # CoreNet's EMA of the weights


def test_the_papers_augmentations_replay_under_the_loaders_seeding():
    from projects.byteformer.pipeline import BytePipeline
    from projects.byteformer.task import ByteClassificationConfig

    cfg = ByteClassificationConfig(channels=3, image_size=32, eval_resize=36, random_resized_crop=True, hflip=True,
                                   rand_augment=True, random_erase=1.0)
    img = Image.open(io.BytesIO(photo(48, "RGB")))
    train, evaluate = BytePipeline(cfg, 10**6, True), BytePipeline(cfg, 10**6, False)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        np.random.seed(3)
        runs.append(np.asarray(train.image(img, "png")))
    assert runs[0].shape == (32, 32, 3) and np.array_equal(runs[0], runs[1])
    assert (runs[0] == 0).all(axis=-1).any()  # an erased patch (p = 1)
    centre = np.asarray(evaluate.image(img, "png"))  # resize to 36, centre crop 32: no randomness
    assert centre.shape == (32, 32, 3) and np.array_equal(centre, np.asarray(evaluate.image(img, "png")))


def test_speech_commands_recipe_is_corenets():
    """CoreNet's speech_commands_wav/encoding_dtype=float32,conv_kernel_size=32.yaml: 12 classes, 16 kHz
    float32 WAV, global batch 48 x 4 ranks x 2 = 384, ~300 epochs, AdamW 1e-3 -> 2e-5 cosine after 500
    warm-up steps, weight decay 0.05, label smoothing 0.1, kernel 32, windows of 128, EMA 1e-4."""
    r = load_recipe(Path(__file__).resolve().parents[2] / "projects/byteformer/configs/speech_commands_wav.yaml")
    assert r.train.micro_batch_size * r.train.grad_accum * 4 == 384 and r.train.max_steps == 66400
    assert (r.model.num_classes, r.model.kernel_size, r.model.window_size) == (12, 32, 128)
    assert (r.task.audio_encoding, r.task.wav_dtype, r.task.sample_rate) == ("wav", "float32", 16000)
    assert (r.optim.lr, r.optim.weight_decay, r.task.label_smoothing) == (1e-3, 0.05, 0.1)
    assert (r.schedule.warmup_steps, r.schedule.min_lr_ratio, r.ema.momentum) == (500, 0.02, 1e-4)
