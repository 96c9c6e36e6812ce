"""Build image-classification shards (``png`` + ``cls`` + ``txt`` caption + ``json`` metadata).

Sources that work offline:
* ``digits``: scikit-learn's 1,797 handwritten 8x8 digits (ships inside the wheel; the default
  data of the README's first command),
* ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` idx files (70,000 28x28 images),
* ``folder:PATH``: any ``PATH/<class>/<image>`` tree.
"""

from __future__ import annotations

import gzip
import io
import math
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from corefm.data import DataError, ShardWriter

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
# Fashion-MNIST's ten classes in plain words (its own labels, "T-shirt/top" and so on, read badly in a
# caption or a zero-shot prompt).
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot"]
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}

Split = tuple[np.ndarray, np.ndarray]  # images (N, H, W) uint8, labels (N,)


def digits(val_fraction: float = 1 / 6, seed: int = 0) -> tuple[Split, Split, list[str]]:
    """scikit-learn's digits as uint8 images (0..16 scaled to 0..255), split by a seeded permutation."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(d.images * (255 / 16), 0, 255).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = int(len(images) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return (images[train], d.target[train]), (images[val], d.target[val]), DIGIT_CLASSES


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(root: Path = FASHION_ROOT) -> tuple[Split, Split, list[str]]:
    """Fashion-MNIST's official 60k/10k split from Debian's idx files."""
    files = {f"{s}-{k}": root / f"{s}-{k}-ubyte.gz" for s in ("train", "t10k")
             for k in ("images-idx3", "labels-idx1")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST not found ({missing[0]}): apt-get install dataset-fashion-mnist")
    train = (_read_idx(files["train-images-idx3"]), _read_idx(files["train-labels-idx1"]))
    test = (_read_idx(files["t10k-images-idx3"]), _read_idx(files["t10k-labels-idx1"]))
    return train, test, FASHION_CLASSES


def folder(root: Path, val_fraction: float = 0.1, seed: int = 0) -> tuple[list, list, list[str]]:
    """``root/<class>/<file>`` -> lists of (path, label), split per class by a seeded permutation."""
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files = [files[i] for i in rng.permutation(len(files))]
        n_val = int(round(len(files) * val_fraction))
        val += [(f, label) for f in files[:n_val]]
        train += [(f, label) for f in files[n_val:]]
    return train, val, classes


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _samples(split, classes: list[str], source: str) -> Iterator[dict]:
    if isinstance(split, tuple):  # arrays
        images, labels = split
        for i, (img, label) in enumerate(zip(images, labels)):
            name = classes[int(label)]
            yield {"__key__": f"{source}-{i:07d}", "png": _png(img), "cls": int(label),
                   "txt": f"a photo of a {name}.", "json": {"class": name, "source": source, "index": i}}
    else:  # (path, label) list: keep the file's own bytes and encoding
        for i, (path, label) in enumerate(split):
            name = classes[label]
            ext = path.suffix.lower().lstrip(".")
            ext = {"jpeg": "jpg", "tif": "tiff"}.get(ext, ext)
            yield {"__key__": f"{source}-{i:07d}", ext: path.read_bytes(), "cls": int(label),
                   "txt": f"a photo of a {name}.", "json": {"class": name, "source": str(path)}}


def write_split(split, classes: list[str], out_dir: Path, prefix: str, num_shards: int, source: str) -> Path:
    """Write one split into ``num_shards`` equal shards plus ``dataset.json``."""
    n = len(split[0]) if isinstance(split, tuple) else len(split)
    per_shard = max(1, math.ceil(n / num_shards))
    producer = {"name": "corefm.data.image_sets", "source": source, "classes": classes}
    with ShardWriter(out_dir, prefix=prefix, max_samples_per_shard=per_shard, producer=producer) as w:
        for sample in tqdm(_samples(split, classes, source), total=n, desc=f"{source}/{prefix}", unit="img"):
            w.write(sample)
    return out_dir


def build(source: str, out: Path, train_shards: int = 8, val_shards: int = 4) -> dict[str, Path]:
    """Build ``out/train`` and ``out/val`` shard sets from ``source`` (digits, fashion-mnist, folder:PATH)."""
    if source == "digits":
        train, val, classes = digits()
    elif source == "fashion-mnist":
        train, val, classes = fashion_mnist()
    elif source.startswith("folder:"):
        train, val, classes = folder(Path(source.removeprefix("folder:")))
    else:
        raise DataError(f"unknown image source {source!r} (use digits, fashion-mnist or folder:PATH)")
    name = source.split(":")[0]
    return {"train": write_split(train, classes, out / "train", "train", train_shards, name),
            "val": write_split(val, classes, out / "val", "val", val_shards, name)}
