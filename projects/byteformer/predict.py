"""Classify files by their bytes with a finished run or a release folder (``corefm byteformer predict``).

A file goes through the same :class:`~projects.byteformer.pipeline.BytePipeline` as evaluation:
a model trained on ``raw`` bytes reads the file exactly as it is on disk; a model trained on an
encoding (TIFF, WAV, ...) gets the file decoded and re-encoded the way its evaluation data was.
Every way a file can be unusable (missing, unreadable, empty, too long, a type the model cannot
read) raises :class:`PredictError` with one line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from corefm.data.errors import SkipSample
from corefm.errors import CheckpointError, CorefmError
from projects.byteformer.encodings import sniff
from projects.byteformer.task import ByteClassificationTask, collate_bytes


class PredictError(CorefmError):
    """One file cannot be classified; the message names the file and the reason."""


def _manifest_classes(spec: str) -> tuple[list[str], set[str]]:
    """Class names and keys from the dataset.json of a shard folder (or a pattern's folder)."""
    from corefm.data import load_manifest

    path = Path(spec.split("#")[0])
    for folder in (path, path.parent):
        if (folder / "dataset.json").is_file():
            m = load_manifest(folder)
            return list(m.producer.get("classes") or []), set(m.keys)
    return [], set()


def class_names(recipe: dict) -> list[str]:
    """Names for every output class: task.class_names, else the training shards' manifests
    (audio sources placed at task.audio_label_offset), else ``class_<i>``."""
    n, task = recipe["model"]["num_classes"], recipe["task"]
    names = [f"class_{i}" for i in range(n)]
    if task.get("class_names"):
        given = list(task["class_names"])
        return given[:n] + names[len(given):]
    for source in str(recipe.get("data", {}).get("train", "")).split("::"):
        classes, keys = _manifest_classes(source) if source else ([], set())
        offset = task.get("audio_label_offset", 0) if keys & {"wav", "mp3", "flac"} else 0
        for i, name in enumerate(classes):
            if offset + i < n:
                names[offset + i] = name
    return names


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class name, probability), most likely first


class Predictor:
    """A ByteFormer loaded from a run folder or a release folder (recipe.json + model.safetensors)."""

    def __init__(self, folder: Path):
        from corefm.train.build import build_task
        from corefm.train.config import parse_recipe

        recipe_file, weights = folder / "recipe.json", folder / "model.safetensors"
        if not folder.is_dir() or not recipe_file.is_file():
            raise CheckpointError(f"{folder} is not a run or release folder (no recipe.json)")
        if not weights.is_file():
            raise CheckpointError(f"{weights} is missing: finish the run or run `corefm export {folder}`")
        raw = json.loads(recipe_file.read_text())
        if raw.get("task", {}).get("name") != "byte_classification":
            raise CheckpointError(f"{folder} holds a {raw.get('task', {}).get('name')!r} model, not a ByteFormer "
                                  "byte classifier")
        self.recipe = parse_recipe(raw)
        task = build_task(self.recipe)
        assert isinstance(task, ByteClassificationTask)
        missing, unexpected = task.model.load_state_dict(load_file(str(weights)), strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{weights} does not match the recipe's model: missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]}")
        self.model = task.model.eval()
        self.max_bytes = task.max_bytes
        classes = folder / "classes.json"
        self.classes = json.loads(classes.read_text()) if classes.is_file() else class_names(raw)
        self.transform = task.sample_transform(False, labelled=False)
        cfg = self.recipe.task
        self.raw = {"image": cfg.image_encoding == "raw", "audio": cfg.audio_encoding == "raw"}
        self.describe = f"images as {cfg.image_encoding}, audio as {cfg.audio_encoding}"

    def encode(self, path: Path) -> dict:
        """Read and encode one file -> a sample for collate_bytes; PredictError if unusable."""
        try:
            data = path.read_bytes()
        except OSError as e:
            raise PredictError(f"{path}: cannot read: {e.strerror or e}") from None
        if not data:
            raise PredictError(f"{path}: empty file (0 bytes): nothing to classify")
        kind = sniff(data)
        if kind is None:
            # An unknown format can only go to a model that reads bytes as they are; the key
            # just selects the raw branch of that modality.
            kind = "tiff" if self.raw["image"] else "wav" if self.raw["audio"] else None
        if kind is None:
            raise PredictError(f"{path}: not an image or audio file this model can read ({self.describe})")
        raw_branch = self.raw["audio" if kind in ("wav", "mp3", "flac") else "image"]
        if raw_branch and len(data) > self.max_bytes:
            raise PredictError(f"{path}: {len(data):,} bytes exceed the model's maximum input of "
                               f"{self.max_bytes:,} bytes")
        try:
            return self.transform({"__key__": path.name, kind: data})
        except SkipSample as e:
            raise PredictError(f"{path}: {e}") from None

    @torch.no_grad()
    def predict(self, paths: list[Path], top: int = 1) -> list[Prediction]:
        """Classify files (one batch); raises PredictError for the first unusable file."""
        samples = [self.encode(p) for p in paths]
        batch = collate_bytes(samples)
        probs = self.model(batch["bytes"], batch["lengths"]).float().softmax(-1)
        out = []
        for path, p in zip(paths, probs):
            values, idx = p.topk(min(top, p.numel()))
            out.append(Prediction(str(path), [(self.classes[int(i)], float(v)) for v, i in zip(values, idx)]))
        return out
