"""Classifier teachers for dataset reinforcement: images in, class logits out, with their input format.

* a corefm run folder whose task classifies images (its recipe's ``image_size``, ``channels``,
  ``mean``/``std``; ``model.safetensors``, or the EMA weights with ``weights="ema"``);
* an open_clip folder (``open_clip_config.json``, e.g. a CLIP release): a zero-shot classifier over
  the class names in open_clip's prompt templates, logits = 100 x cosine similarity (CLIP's scale).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from corefm.errors import CheckpointError, ConfigError


@dataclass
class Teacher:
    """``teacher(images)``: (B, channels, image_size, image_size) normalised -> logits (B, num_classes)."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    image_size: int
    channels: int
    mean: list[float]
    std: list[float]
    num_classes: int
    source: dict[str, Any] = field(default_factory=dict)  # what it is, for the manifest

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images)

    def describe(self) -> dict[str, Any]:
        return {**self.source, "image_size": self.image_size, "channels": self.channels, "mean": self.mean,
                "std": self.std, "num_classes": self.num_classes}


def _per_channel(value: float | Sequence[float], channels: int) -> list[float]:
    values = [float(value)] * channels if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != channels:
        raise ConfigError(f"mean/std {value!r} does not match {channels} channels")
    return values


def run_teacher(path: Path, weights: str = "raw") -> Teacher:
    from corefm.train.evaluate import load_run

    recipe, task = load_run(path, weights=weights)
    cfg, model = task.cfg, task.model.eval()
    if not all(hasattr(cfg, a) for a in ("image_size", "channels", "mean", "std")) or \
            not isinstance(getattr(model, "num_classes", None), int):
        raise ConfigError(f"{path} is a {recipe.model_name}/{recipe.task_name} run; a teacher must be an image "
                          "classifier (task classification)")
    return Teacher(model, cfg.image_size, cfg.channels, _per_channel(cfg.mean, cfg.channels),
                   _per_channel(cfg.std, cfg.channels), model.num_classes,
                   {"kind": "corefm-run", "path": str(path), "model": recipe.model_name, "weights": weights})


def open_clip_teacher(path: Path, class_names: Sequence[str], templates: str = "simple") -> Teacher:
    import open_clip

    from corefm.eval.zero_shot import classifier

    if not class_names:
        raise ConfigError("an open_clip teacher needs class names (--classes, or a dataset.json with classes)")
    model, _, _ = open_clip.create_model_and_transforms("local-dir:" + str(path))
    model.eval()
    tokenizer = open_clip.get_tokenizer("local-dir:" + str(path))
    weights = classifier(model, tokenizer, list(class_names), templates)
    pre = json.loads((path / "open_clip_config.json").read_text()).get("preprocess_cfg", {})
    size = pre.get("size", model.visual.image_size)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    mean = list(pre.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = list(pre.get("std", open_clip.OPENAI_DATASET_STD))

    def forward(images: torch.Tensor) -> torch.Tensor:
        features = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        return 100.0 * features @ weights

    return Teacher(forward, size, 3, mean, std, len(class_names),
                   {"kind": "open_clip", "path": str(path), "classes": list(class_names), "templates": templates})


def load_teacher(path: str | Path, class_names: Sequence[str] = (), weights: str = "raw") -> Teacher:
    """A corefm run folder or an open_clip folder as a :class:`Teacher`."""
    path = Path(path)
    if (path / "recipe.json").is_file():
        return run_teacher(path, weights)
    if (path / "open_clip_config.json").is_file():
        return open_clip_teacher(path, class_names)
    raise CheckpointError(f"{path} is neither a corefm run folder (recipe.json) nor an open_clip folder "
                          "(open_clip_config.json)")
