"""Shard sample -> augmented image or waveform -> file bytes -> byte transforms -> uint8 array.

One picklable callable, :class:`BytePipeline`, used by the task in the data workers and by
``corefm byteformer predict`` on a file, so a prediction sees exactly the bytes evaluation saw.
A sample holds one image (``png``/``jpg``/``tiff``/...) or one audio clip (``wav``/``mp3``/``flac``)
as file bytes, plus ``cls`` in shards. Anything unusable raises SkipSample with the reason.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image
from torchvision.transforms import InterpolationMode, RandAugment, RandomErasing, RandomResizedCrop
from torchvision.transforms.functional import center_crop, pil_to_tensor, resize, to_pil_image

from corefm.data.errors import SkipSample
from projects.byteformer.byte_transforms import build_transform
from projects.byteformer.encodings import AUDIO_KEYS, IMAGE_KEYS, Waveform, build_encoding

MODALITIES = ("image", "audio")


def find_media(sample: dict) -> tuple[str, Any]:
    """The first image or audio key of a sample and its value (file bytes or a PIL image)."""
    for key in IMAGE_KEYS + AUDIO_KEYS:
        if key in sample:
            return key, sample[key]
    looked = ", ".join(IMAGE_KEYS + AUDIO_KEYS)
    raise SkipSample(f"sample {sample.get('__key__')} has no image or audio (looked for {looked})")


def decode_audio(data: bytes, sample_rate: int) -> np.ndarray:
    """WAV/MP3/FLAC bytes -> mono float32 (T,) at sample_rate (polyphase resampling if needed)."""
    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)
    if rate != sample_rate:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(rate, sample_rate)
        samples = resample_poly(samples, sample_rate // g, rate // g).astype(np.float32)
    return samples


class BytePipeline:
    """``sample -> (bytes uint8 (N,), modality index)`` under a ByteClassificationConfig.

    train=True turns on the augmentations (pixel shifts/flips, random crop or placement of
    the clip); they use numpy's global RNG, which corefm's loader seeds per batch.
    """

    def __init__(self, cfg: Any, max_bytes: int, train: bool) -> None:
        self.cfg, self.max_bytes, self.train = cfg, max_bytes, train
        self.image_encoding = (
            build_encoding("jpeg", quality=cfg.jpeg_quality) if cfg.image_encoding == "jpeg"
            else build_encoding(cfg.image_encoding))
        if self.image_encoding.modality not in ("image", "raw"):
            raise ValueError(f"task.image_encoding {cfg.image_encoding!r} is not an image encoding")
        kwargs = {"wav": {"dtype": cfg.wav_dtype}, "mp3": {"compression": cfg.mp3_compression}}
        self.audio_encoding = build_encoding(cfg.audio_encoding, **kwargs.get(cfg.audio_encoding, {}))
        if self.audio_encoding.modality not in ("audio", "raw"):
            raise ValueError(f"task.audio_encoding {cfg.audio_encoding!r} is not an audio encoding")
        self.transforms = [build_transform(dict(t)) for t in cfg.byte_transforms]
        # torchvision's transforms draw from torch's global RNG, which corefm's loader seeds per batch
        # (as numpy's), so a resumed run replays them
        self.random_resized_crop = RandomResizedCrop(cfg.image_size, interpolation=InterpolationMode.BICUBIC) \
            if cfg.image_size else None
        self.rand_augment = RandAugment(num_ops=2, magnitude=9)
        self.random_erase = RandomErasing(p=cfg.random_erase, value=0)

    def image(self, value: Any, key: str) -> Image.Image:
        cfg = self.cfg
        try:
            img = Image.open(io.BytesIO(value)) if isinstance(value, (bytes, bytearray)) else value
            img.load()
            img = img.convert("L" if cfg.channels == 1 else "RGB")
        except Exception as e:  # noqa: BLE001 - any decoder failure makes the sample unusable
            raise SkipSample(f"undecodable {key} image: {e}") from None
        img = self.geometry(img)
        if self.train and (cfg.max_shift or cfg.hflip):
            pixels = np.asarray(img)
            if cfg.hflip and np.random.rand() < 0.5:
                pixels = pixels[:, ::-1]
            if cfg.max_shift:
                dy, dx = np.random.randint(-cfg.max_shift, cfg.max_shift + 1, size=2)
                pixels = np.roll(pixels, (int(dy), int(dx)), axis=(0, 1))
            img = Image.fromarray(np.ascontiguousarray(pixels))
        if self.train and cfg.rand_augment:
            img = self.rand_augment(img)
        if self.train and cfg.random_erase:
            img = to_pil_image(self.random_erase(pil_to_tensor(img)))
        return img

    def geometry(self, img: Image.Image) -> Image.Image:
        """To ``image_size`` (if set): a random resized crop when training with it, a resize and centre
        crop in eval with ``eval_resize``, else a plain resize."""
        size = self.cfg.image_size
        if not size:
            return img
        if self.train and self.cfg.random_resized_crop:
            return self.random_resized_crop(img)
        if not self.train and self.cfg.eval_resize:
            return center_crop(resize(img, self.cfg.eval_resize, InterpolationMode.BICUBIC), [size, size])
        return img if img.size == (size, size) else img.resize((size, size), Image.BILINEAR)

    def audio(self, value: bytes, key: str) -> Waveform:
        cfg = self.cfg
        try:
            x = decode_audio(bytes(value), cfg.sample_rate)
        except Exception as e:  # noqa: BLE001 - libsndfile raises its own error types
            raise SkipSample(f"undecodable {key} audio: {e}") from None
        n = int(round(cfg.audio_seconds * cfg.sample_rate))
        if n:
            # A fixed-length clip (Speech Commands style): random crop / placement when training.
            extra = abs(len(x) - n)
            start = np.random.randint(extra + 1) if self.train else extra // 2
            x = x[start: start + n] if len(x) >= n else np.pad(x, (start, n - len(x) - start))
        if self.train and cfg.gain_db:
            x = x * np.float32(10 ** (np.random.uniform(-cfg.gain_db, cfg.gain_db) / 20))
        return Waveform(x.astype(np.float32), cfg.sample_rate)

    def __call__(self, sample: dict) -> tuple[np.ndarray, int]:
        key, value = find_media(sample)
        modality = 0 if key in IMAGE_KEYS else 1
        encoding = self.image_encoding if modality == 0 else self.audio_encoding
        if encoding.modality == "raw":
            if not isinstance(value, (bytes, bytearray)):
                raise SkipSample(f"raw encoding needs file bytes under .{key}, got {type(value).__name__}")
            data = encoding(bytes(value))
        elif modality == 0:
            data = encoding(self.image(value, key))
        else:
            data = encoding(self.audio(value, key))
        for transform in self.transforms:
            data = transform(data)
        if len(data) == 0:
            raise SkipSample("empty input: 0 bytes")
        if len(data) > self.max_bytes:
            raise SkipSample(f"{len(data):,} bytes exceed max_bytes ({self.max_bytes:,}); raise task.max_bytes "
                             "and model.max_bytes, or use a shorter input")
        return np.ascontiguousarray(data, dtype=np.uint8), modality
