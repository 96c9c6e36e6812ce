"""Small image-text shard sets with real captions, for the CatLIP label tool and task."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corefm.data import ShardWriter

TRAIN_CAPTIONS = [
    "Two dogs running on the beach", "a dog asleep on the beach", "a black dog with a ball",
    "Children eating ice creams", "a bowl of ice cream on a table", "the ice cream melts",
    "a cat on a table", "A cat and a mouse", "my cat's favourite bowl",
    "an abstract idea",  # no concrete noun in the vocabulary: dropped as unlabelled
]
VAL_CAPTIONS = ["a dog and a cat", "ice cream for the children", "a wooden table"]


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_image_text(out: Path, split: str, captions: list[str], shards: int = 2, extra: dict | None = None) -> None:
    with ShardWriter(out / split, prefix=split, num_shards=shards,
                     producer={"name": "tests", "classes": ["dog", "cat"]}) as w:
        for i, text in enumerate(captions):
            w.write({"__key__": f"{split}{i:03d}", "png": _png(i), "txt": text, "cls": i % 2, **(extra or {})})


@pytest.fixture
def captions_it(tmp_path) -> Path:
    """IN/train (10 captions, one bad) and IN/val (3) image-text shard sets."""
    root = tmp_path / "it"
    write_image_text(root, "train", TRAIN_CAPTIONS)
    with ShardWriter(root / "train", prefix="bad", num_shards=1, producer={"name": "tests"}) as w:
        w.write({"__key__": "nocaption", "png": _png(99), "txt": "   "})
    write_image_text(root, "val", VAL_CAPTIONS)
    return root
