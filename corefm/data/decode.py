"""Decode raw webdataset samples (extension -> bytes) into Python values, never via pickle.

By the last suffix of each key (`seg.png` decodes as png):
    jpg jpeg png webp ppm bmp tif tiff -> PIL.Image, loaded, original mode kept
                                          (or the raw file bytes with images="raw": ByteFormer)
    txt -> str, cls -> int, json -> object, npy -> np.ndarray (allow_pickle=False)
    pyd pickle pkl pth pt              -> refused with DataError (they would unpickle)
    anything else                      -> bytes unchanged
Undecodable values raise SkipSample, so a map_fn calling this drops the sample and the stream
counts it.
"""

from __future__ import annotations

import io
import json
from typing import Any, Iterable, Literal, Mapping

import numpy as np

from corefm.data.errors import DataError, SkipSample

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff"})
REFUSED_EXTENSIONS = frozenset({"pyd", "pickle", "pkl", "pth", "pt"})


def last_suffix(key: str) -> str:
    """`seg.png` -> `png`; lower-cased."""
    return key.rsplit(".", 1)[-1].lower()


def decode_image(data: bytes) -> Any:
    """Bytes of an image file -> loaded PIL.Image in its stored mode (L, P, RGB, I;16, ...)."""
    from PIL import Image  # imported here so non-image pipelines never pay for it

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def decode_value(key: str, data: bytes, images: Literal["pil", "raw"] = "pil") -> Any:
    """Decode one member by the last suffix of `key`; see the module docstring for the table."""
    ext = last_suffix(key)
    if ext in REFUSED_EXTENSIONS:
        raise DataError(f"refusing to decode .{key}: pickle-based formats are not allowed")
    try:
        if ext in IMAGE_EXTENSIONS:
            return data if images == "raw" else decode_image(data)
        if ext == "txt":
            return data.decode("utf-8")
        if ext == "cls":
            return int(data.decode("ascii").strip())
        if ext == "json":
            return json.loads(data)
        if ext == "npy":
            return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        # PIL raises OSError/SyntaxError, json and int raise ValueError, np.load ValueError/EOFError
        raise SkipSample(f".{key}: cannot decode: {err}") from None
    return data


def decode_sample(
    raw: Mapping[str, Any],
    keys: Iterable[str] | None = None,
    images: Literal["pil", "raw"] = "pil",
) -> dict[str, Any]:
    """Decode a raw sample; `__meta__` entries (`__key__`, `__url__`) are passed through.

    Args:
        raw: {"__key__": str, "__url__": str, "<ext>": bytes, ...} as the stream yields it.
        keys: extension keys to decode and return (others are dropped and never decoded);
            None = all. A requested key missing from the sample raises SkipSample.
        images: "pil" decodes image keys to PIL images; "raw" keeps their file bytes.
    """
    out: dict[str, Any] = {k: v for k, v in raw.items() if k.startswith("__")}
    if keys is None:
        wanted = [k for k in raw if not k.startswith("__")]
    else:
        wanted = list(keys)
        missing = [k for k in wanted if k not in raw]
        if missing:
            raise SkipSample(f"sample {raw.get('__key__')!r} has no .{missing[0]}")
    for key in wanted:
        out[key] = decode_value(key, raw[key], images)
    return out
