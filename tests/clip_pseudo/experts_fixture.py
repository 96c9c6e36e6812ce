"""Experts for tests, loaded by the pseudo-label tool as ``import:tests.clip_pseudo.experts_fixture.X``."""

from __future__ import annotations

import numpy as np

from projects.clip_pseudo.data.experts import Expert


class Flaky(Expert):
    """Writes a brightness map, but raises on every image whose mean pixel value is odd."""

    name, version, key = "flaky", "0.1", "depth.png"

    def label(self, image):
        arr = np.asarray(image.convert("L"))
        if int(arr.mean()) % 2:
            raise RuntimeError(f"flaky expert fails on mean {int(arr.mean())}")
        return (arr.astype(np.uint16) * 257)


class WrongType(Expert):
    """Returns a label its key cannot store (the encoding step raises)."""

    name, version, key = "wrong-type", "1", "normal.png"

    def label(self, image):
        return np.zeros((4, 4), dtype=np.float64)


class Unfinished(Expert):
    """Forgot to implement label(): refused when the expert is built, before any shard is read."""

    name, version, key = "unfinished", "0", "seg.png"
