"""Per-sample decoding in the data workers: image, caption and pseudo-labels, with one geometry.

The image goes through open_clip's eval geometry (resize the shortest side, centre crop) so the
released model's ``preprocess`` matches training exactly; every label map gets the same resize
and crop at its own resolution (nearest for class and 0/1 maps, bilinear for regression), and
the same random horizontal flip.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import numpy as np
import torch
from PIL import Image

from corefm.data.errors import SkipSample
from projects.clip_pseudo.heads import HeadSpec

log = logging.getLogger("corefm.data")
_bad_labels = 0  # per worker process; the first few are logged, as the loader does for skipped samples

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tiff", "tif", "ppm")
MAX_CAPTION_CHARS = 2000


def fit(img: Image.Image, size: int, resample: int) -> Image.Image:
    """Resize so the shortest side is ``size``, then centre-crop to size x size (open_clip's eval)."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size)) if (nw, nh) != (size, size) else img


def open_image(value: Any, key: str, sample_key: Any) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(value)) if isinstance(value, (bytes, bytearray)) else value
        img.load()
        return img
    except Exception as e:  # noqa: BLE001 - any decoder failure makes this member unusable
        raise SkipSample(f"undecodable .{key} in {sample_key}: {type(e).__name__}: {e}") from None


def find_image(sample: dict) -> Image.Image:
    for key in IMAGE_KEYS:
        if key in sample:
            return open_image(sample[key], key, sample.get("__key__"))
    raise SkipSample(f"sample {sample.get('__key__')} has no image (looked for {', '.join(IMAGE_KEYS)})")


def caption(sample: dict, key: str = "txt") -> str:
    """The sample's caption, whitespace-normalised; SkipSample when missing, not UTF-8 or empty."""
    value = sample.get(key)
    if value is None:
        raise SkipSample(f"sample {sample.get('__key__')} has no .{key} caption")
    if isinstance(value, (bytes, bytearray)):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SkipSample(f"caption of {sample.get('__key__')} is not UTF-8 ({e.reason})") from None
    text = " ".join(str(value).split())
    if not text or len(text) > MAX_CAPTION_CHARS:
        raise SkipSample(f"caption of {sample.get('__key__')} is {'empty' if not text else 'over 2000 chars'}")
    return text


Box = tuple[float, float, float, float]  # (left, top, right, bottom) as fractions of width and height


def place(img: Image.Image, size: int, resample: int, box: Box | None = None) -> Image.Image:
    """``fit`` (shortest side to ``size``, centre crop), or with ``box``: that region, resized to
    size x size (a random resized crop; the same fractions cut an image and its labels alike)."""
    if box is None:
        return fit(img, size, resample)
    w, h = img.size
    region = (round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h))
    return img.crop(region).resize((size, size), resample)


def random_box(img: Image.Image, scale: tuple[float, float]) -> Box:
    """torchvision's RandomResizedCrop draw (area in ``scale``, aspect 3/4-4/3, torch's RNG, which
    corefm's loader seeds per batch) as fractions of the image."""
    from torchvision.transforms import RandomResizedCrop

    top, left, h, w = RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3])
    width, height = img.size
    return left / width, top / height, (left + w) / width, (top + h) / height


def image_tensor(img: Image.Image, size: int, mean: tuple, std: tuple, flip: bool, box: Box | None = None) -> torch.Tensor:
    """PIL image -> (3, size, size) float, normalised with mean/std (``box``: see :func:`place`)."""
    img = place(img.convert("RGB"), size, Image.BICUBIC, box)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def boxes_to_mask(value: Any, sample_key: Any) -> Image.Image:
    """``boxes.json`` {"width", "height", "boxes": [[x0, y0, x1, y1], ...]} -> box-occupancy mask (L)."""
    data = json.loads(value) if isinstance(value, (bytes, bytearray, str)) else value
    try:
        w, h = int(data["width"]), int(data["height"])
        mask = np.zeros((h, w), dtype=np.uint8)
        for x0, y0, x1, y1 in data["boxes"]:
            mask[max(0, int(y0)): max(0, int(np.ceil(y1))), max(0, int(x0)): max(0, int(np.ceil(x1)))] = 255
    except (KeyError, TypeError, ValueError) as e:
        raise SkipSample(f"bad boxes.json in {sample_key}: {e}") from None
    return Image.fromarray(mask)


def label_tensor(spec: HeadSpec, value: Any, size: int, flip: bool, sample_key: Any,
                 box: Box | None = None) -> torch.Tensor:
    """One pseudo-label -> segmentation (S, S) long, or (C, S, S) float for binary/regression."""
    img = boxes_to_mask(value, sample_key) if spec.key.endswith(".json") else open_image(value, spec.key, sample_key)
    # nearest keeps class ids, 0/1 maps and the "no value" zeros of depth maps exact
    nearest = spec.kind in ("segmentation", "binary") or spec.ignore_zero
    if spec.kind == "regression" and spec.channels == 3:
        img = img.convert("RGB")
    elif img.mode in ("P", "1", "LA", "RGB", "RGBA") and spec.channels == 1:
        img = img.convert("L")
    if img.mode in ("I;16", "I;16B", "I;16L"):
        img = img.convert("I")  # 16-bit depth: PIL resizes 32-bit integer images, not I;16
    img = place(img, size, Image.NEAREST if nearest else Image.BILINEAR, box)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(img)
    if spec.kind == "segmentation":
        return torch.from_numpy(arr.astype(np.int64))
    if spec.kind == "binary":
        return torch.from_numpy((arr > 127).astype(np.float32)).reshape(spec.channels, size, size)
    peak = 65535.0 if img.mode == "I" else 255.0
    x = torch.from_numpy(arr.astype(np.float32) / peak)
    if spec.channels == 3:  # normals stored as (n + 1) / 2 * 255 per channel
        x = x.permute(2, 0, 1) * 2 - 1
        if flip:
            x[0] = -x[0]  # mirroring the image mirrors the normals' x component
        return x
    return x.reshape(1, size, size)


def empty_label(spec: HeadSpec, size: int) -> torch.Tensor:
    if spec.kind == "segmentation":
        return torch.full((size, size), spec.ignore_index, dtype=torch.long)
    return torch.zeros(spec.channels, size, size)


def labels_for(sample: dict, specs: list[HeadSpec], sizes: dict[str, int], flip: bool,
               box: Box | None = None) -> dict[str, torch.Tensor]:
    """``label_<name>`` and ``mask_<name>`` (1.0 if the expert's label is there) for every head.

    A label the expert failed to write is absent from the shard; one that is present but cannot be
    decoded is treated the same way (masked), so one bad label never costs the whole sample.
    """
    out: dict[str, torch.Tensor] = {}
    for spec in specs:
        size = sizes[spec.name]
        value, ok = sample.get(spec.key), 0.0
        label = None
        if value is not None:
            try:
                label, ok = label_tensor(spec, value, size, flip, sample.get("__key__"), box), 1.0
            except SkipSample as e:
                global _bad_labels
                _bad_labels += 1
                if _bad_labels <= 5:
                    log.warning("masking label %s of %s from %s: %s", spec.key, sample.get("__key__"),
                                sample.get("__url__"), e)
        out[f"label_{spec.name}"] = label if label is not None else empty_label(spec, size)
        out[f"mask_{spec.name}"] = torch.tensor(ok)
    return out
