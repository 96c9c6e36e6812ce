"""The expert interface: a name, a version, the shard key it writes, and image -> label.

A label is encoded by the key's extension: ``*.png`` from a uint8 (8-bit) or uint16 (16-bit)
array of shape (H, W) or (H, W, 3); ``*.json`` from a dict. The pseudo-label tool records
``name`` and ``version`` beside every label it writes, so a shard always says which expert (and
which weights) made each label.

Depth maps (``depth.png``) share one convention whatever the expert: uint16, 0 = no value (e.g.
no stereo match), 1..65535 = relative inverse depth (larger = nearer), min-max scaled per image.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from PIL import Image


class Expert(ABC):
    """Subclasses set ``name``, ``version``, ``key`` and implement :meth:`label`.

    ``inputs`` names other image members of the sample the expert also needs (a stereo pair's
    ``right.png``); they are decoded and passed to :meth:`label` after the image, in order.
    """

    name: str = ""
    version: str = ""
    key: str = ""
    inputs: tuple[str, ...] = ()

    @abstractmethod
    def label(self, image: Image.Image, *others: Image.Image) -> Any:
        """image (any PIL mode) -> label: np.ndarray for ``*.png`` keys, dict for ``*.json``."""

    def __call__(self, image: Image.Image, others: dict[str, Image.Image] | None = None) -> Any:
        if not self.inputs:
            return self.label(image)
        missing = [k for k in self.inputs if k not in (others or {})]
        if missing:
            raise KeyError(f"sample has no .{missing[0]} (needed by {self.name})")
        return self.label(image, *(others[k] for k in self.inputs))

    def encode(self, label: Any) -> bytes:
        return encode_label(self.key, label)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r}, key={self.key!r})"


def encode_label(key: str, label: Any) -> bytes:
    """Bytes stored under ``key`` (see the module docstring)."""
    if key.endswith(".json"):
        if not isinstance(label, dict):
            raise TypeError(f"{key} label must be a dict, got {type(label).__name__}")
        return json.dumps(label, sort_keys=True).encode("utf-8")
    if key.endswith(".png"):
        arr = np.asarray(label)
        if arr.dtype == np.uint16 and arr.ndim == 2:
            img = Image.fromarray(arr)  # mode I;16
        elif arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
            img = Image.fromarray(arr)
        else:
            raise TypeError(f"{key} label must be uint8 (H, W[, 3]) or uint16 (H, W), got {arr.dtype} {arr.shape}")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"no encoding for label key {key!r} (use *.png or *.json)")


def relative_depth(inv_depth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Inverse depth / disparity (H, W) float -> depth.png uint16 (see the module docstring)."""
    valid = np.isfinite(inv_depth) if valid is None else valid & np.isfinite(inv_depth)
    if not valid.any():
        raise ValueError("no valid depth value in the image")
    lo, hi = float(inv_depth[valid].min()), float(inv_depth[valid].max())
    scaled = (inv_depth - lo) / (hi - lo) if hi > lo else np.zeros_like(inv_depth)
    out = np.zeros(inv_depth.shape, dtype=np.uint16)
    out[valid] = (1 + np.round(np.clip(scaled[valid], 0, 1) * 65534)).astype(np.uint16)
    return out


def grey(image: Image.Image) -> np.ndarray:
    """(H, W) uint8 luminance of any PIL image (alpha composited on white, as clip art is drawn)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"))


def rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of any PIL image."""
    return np.asarray(image.convert("RGB"))
