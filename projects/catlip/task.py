"""``catlip`` task: multi-label binary cross-entropy over the synset vocabulary (CatLIP).

Shards come from ``corefm catlip labels`` (``catlip.json`` per sample, the vocabulary in the
manifest). Images go through CLIP's preprocessing (:mod:`projects.clip_pseudo.labels`: shortest
side, centre crop or a random resized crop, optional flips, OpenAI mean/std), so a CatLIP and a
CLIP recipe with the same model preset train the same tower on the same pixels.

The loss sums the per-synset BCE over the vocabulary and averages over the batch: with the
default mean over all B x V terms the gradient shrinks as the vocabulary grows. Eval sums give,
over held-out samples: top-1 precision (is the highest-scoring synset one of the caption's),
recall@5, the BCE, and ``prior_top1``, the top-1 precision of always answering the most frequent
train synset: the chance level the first number has to beat.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from corefm.data.errors import DataError, SkipSample
from corefm.errors import ConfigError
from corefm.registry import register_task
from corefm.tasks.base import Task, TaskContext
from projects.catlip.shards import LABEL_KEY, Vocabulary, read_vocabulary
from projects.clip_pseudo.labels import find_image, image_tensor, random_box
from projects.clip_pseudo.openclip_io import OPENAI_MEAN, OPENAI_STD


@dataclass
class CatlipTaskConfig:
    mean: list[float] = field(default_factory=lambda: list(OPENAI_MEAN))
    std: list[float] = field(default_factory=lambda: list(OPENAI_STD))
    hflip: bool = False  # train: random horizontal flips
    # train: RandomResizedCrop area fraction range (open_clip's [0.9, 1.0]); []: the eval transform
    random_resized_crop: list[float] = field(default_factory=list)


def read_targets(sample: dict, num_classes: int) -> list[int]:
    """The vocabulary indices of a sample's ``catlip.json``; SkipSample if missing or out of range."""
    value = sample.get(LABEL_KEY)
    if value is None:
        raise SkipSample(f"sample {sample.get('__key__')} has no {LABEL_KEY} (write the shards with "
                         "`corefm catlip labels`)")
    try:
        data = json.loads(value) if isinstance(value, (bytes, bytearray, str)) else value
        labels = [int(k) for k in data["labels"]]
    except (ValueError, TypeError, KeyError):
        raise SkipSample(f"sample {sample.get('__key__')}: bad {LABEL_KEY}") from None
    if any(k < 0 or k >= num_classes for k in labels):
        raise SkipSample(f"sample {sample.get('__key__')}: label outside 0..{num_classes - 1}")
    return labels


class SampleTransform:
    """Picklable raw sample -> {image (3, S, S), target (V,) multi-hot float} for the data workers."""

    def __init__(self, cfg: CatlipTaskConfig, image_size: int, num_classes: int, train: bool) -> None:
        self.cfg, self.image_size, self.num_classes, self.train = cfg, image_size, num_classes, train

    def __call__(self, sample: dict) -> dict:
        cfg = self.cfg
        labels = read_targets(sample, self.num_classes)  # before decoding the image
        img = find_image(sample)
        # the loader seeds python's and torch's RNGs per batch, so a resumed run replays these draws
        flip = self.train and cfg.hflip and random.random() < 0.5
        box = random_box(img, tuple(cfg.random_resized_crop)) if self.train and cfg.random_resized_crop else None
        target = torch.zeros(self.num_classes)
        target[labels] = 1.0
        return {"image": image_tensor(img, self.image_size, tuple(cfg.mean), tuple(cfg.std), flip, box),
                "target": target}


class CatlipTask(Task):
    def __init__(self, cfg: CatlipTaskConfig, model: torch.nn.Module, vocab: Vocabulary) -> None:
        super().__init__(model)
        self.cfg, self.vocab = cfg, vocab
        self.prior_class = max(range(len(vocab)), key=lambda k: vocab.counts[k])

    def sample_transform(self, train: bool) -> Callable[[dict], dict]:
        return SampleTransform(self.cfg, self.model.image_size, self.model.num_classes, train)

    def forward(self, batch: dict[str, Any], mode: str = "train") -> dict[str, torch.Tensor]:
        logits = self.model(batch["image"]).float()  # (B, V)
        target = batch["target"].float()  # (B, V)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)  # (B,)
        top1 = target.gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)  # (B,) 1 if a caption synset
        if mode != "eval":
            return {"loss": bce.mean(), "top1": top1.mean()}
        top5 = target.gather(1, logits.topk(min(5, logits.shape[-1]), dim=-1).indices).sum(-1)
        return {"count": logits.new_full((), target.shape[0]), "loss_sum": bce.sum(), "top1_sum": top1.sum(),
                "recall5_sum": (top5 / target.sum(-1).clamp(min=1)).sum(),
                "prior_sum": target[:, self.prior_class].sum()}

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("count", 0.0), 1.0)
        return {"top1_precision": sums["top1_sum"] / n, "recall5": sums["recall5_sum"] / n,
                "prior_top1": sums["prior_sum"] / n, "loss": sums["loss_sum"] / n, "samples": sums["count"]}


@register_task("catlip", CatlipTaskConfig)
def build_catlip_task(cfg: CatlipTaskConfig, model: torch.nn.Module, context: TaskContext) -> Task:
    if not hasattr(model, "features") or not hasattr(model, "num_classes"):
        raise ConfigError(f"task catlip needs model.name: catlip, got a {type(model).__name__}")
    crop = cfg.random_resized_crop
    if crop and not (len(crop) == 2 and 0 < crop[0] <= crop[1] <= 1):
        raise ConfigError(f"task.random_resized_crop: [min, max] area fractions in (0, 1], got {crop}")
    spec = context.train_data or context.val_data
    if not spec:
        raise ConfigError("task catlip reads its vocabulary from the data's manifest: set data.train")
    try:
        vocab = read_vocabulary(spec.split("#")[0])
    except DataError as err:
        raise ConfigError(str(err)) from None
    if context.val_data and context.train_data:
        try:
            val_vocab = read_vocabulary(context.val_data.split("#")[0])
        except DataError as err:
            raise ConfigError(f"data.val: {err}") from None
        if val_vocab.synsets != vocab.synsets:
            raise ConfigError(f"{context.val_data} is labelled with another vocabulary than {spec} (label it with "
                              "`corefm catlip labels --vocabulary TRAIN_SHARDS`)")
    if len(vocab) != model.num_classes:
        raise ConfigError(f"model.num_classes is {model.num_classes} but {spec} has a vocabulary of "
                          f"{len(vocab)} synsets: set model.num_classes={len(vocab)}")
    return CatlipTask(cfg, model, vocab)
