"""Image classification: cross-entropy on ``cls`` labels, accuracy on held-out shards.

Shards hold an image (``png``/``jpg``/... or ``npy`` array) and an integer ``cls``. The model is
any ``nn.Module`` mapping ``(B, C, H, W)`` float images to ``(B, num_classes)`` logits. A model that
declares its input (``image_size``, ``in_chans`` attributes) sets the task's image side and channels;
a task section that names them too must agree.

With ``distill.enabled`` the train samples come from ``corefm data reinforce``: each visit replays one
of the sample's stored views and the loss is distillation against the teacher's stored top-k logits
(:mod:`corefm.tasks.distill`); held-out evaluation is unchanged.

With ``range_augment.enabled`` the task owns a :class:`corefm.augment.RangeAugment`: its range
parameters train with the model (same optimizer, saved in checkpoints, clamped after every step
through :meth:`parameter_bounds`, left out of the exported weights), it augments train batches only,
and its auxiliary loss (times ``range_augment.loss_weight``) joins the cross-entropy.
"""

from __future__ import annotations

import dataclasses
import io
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from corefm.augment import RangeAugment, RangeAugmentConfig
from corefm.data.errors import SkipSample
from corefm.errors import ConfigError
from corefm.registry import register_task
from corefm.tasks.base import Task, TaskContext, model_num_classes, read_label
from corefm.tasks.distill import DistillConfig, kd_loss, reinforced_view

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "bmp", "tiff", "tif", "ppm")


@dataclass
class ClassificationConfig:
    # Images are resized to this square side and converted to this many channels (1 or 3); None
    # takes the model's (its image_size / in_chans), which a model that declares them requires.
    image_size: int | None = None
    channels: int | None = None
    mean: float = 0.5
    std: float = 0.5
    label_smoothing: float = 0.0
    # Train-time augmentation: random shifts of up to this many pixels (0 = none).
    max_shift: int = 0
    # Learned-range augmentation on the device (corefm/augment/README.md); off unless enabled: true.
    range_augment: RangeAugmentConfig = field(default_factory=RangeAugmentConfig)
    # Knowledge distillation on reinforced shards (corefm/tasks/distill.py); off unless enabled: true.
    distill: DistillConfig = field(default_factory=DistillConfig)


def load_image(sample: dict, channels: int) -> Image.Image:
    """Find the image in a raw or decoded sample and convert it to L or RGB."""
    for key in IMAGE_KEYS:
        if key in sample:
            value = sample[key]
            try:
                img = Image.open(io.BytesIO(value)) if isinstance(value, bytes) else value
                img.load()
            except Exception as e:  # noqa: BLE001 - any decoder failure makes the sample unusable
                raise SkipSample(f"undecodable {key} image in {sample.get('__key__')}: {e}") from e
            return img.convert("L" if channels == 1 else "RGB")
    if "npy" in sample:
        return Image.fromarray(np.asarray(sample["npy"], dtype=np.uint8))
    raise SkipSample(f"sample {sample.get('__key__')} has no image key (looked for {', '.join(IMAGE_KEYS)}, npy)")


class ClassificationTask(Task):
    def __init__(self, cfg: ClassificationConfig, model: torch.nn.Module):
        super().__init__(model)
        self.cfg = cfg
        self.num_classes = model_num_classes(model)  # labels outside 0..num_classes-1 are skipped
        # A submodule, so its parameters reach the optimizer and checkpoints with the model's.
        self.range_augment = (RangeAugment(cfg.range_augment, cfg.channels, "task.range_augment")
                              if cfg.range_augment.enabled else None)

    def sample_transform(self, train: bool) -> Callable[[dict], dict]:
        cfg, num_classes = self.cfg, self.num_classes

        def transform(sample: dict) -> dict:
            if "cls" not in sample:
                raise SkipSample(f"sample {sample.get('__key__')} has no 'cls' label")
            label = read_label(sample["cls"], num_classes, f"sample {sample.get('__key__')}")  # before decoding
            if train and cfg.distill.enabled:
                # the loader seeds python's RNG per batch, so a resumed run replays the same views
                out = reinforced_view(sample, load_image(sample, cfg.channels), cfg.image_size, cfg.mean, cfg.std,
                                      num_classes or 1 << 31, random)
                return {**out, "label": torch.tensor(label)}
            img = load_image(sample, cfg.channels).resize((cfg.image_size, cfg.image_size), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
            x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
            if train and cfg.max_shift > 0:
                # The loader seeds numpy's global RNG per batch, so a resumed run replays this.
                dy, dx = np.random.randint(-cfg.max_shift, cfg.max_shift + 1, size=2)
                x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(1, 2))
            return {"image": (x - cfg.mean) / cfg.std, "label": torch.tensor(label)}

        return transform

    def parameter_bounds(self) -> dict[str, tuple[float | None, float | None]]:
        if self.range_augment is None:
            return {}
        return {f"range_augment.{name}": b for name, b in self.range_augment.bounds().items()}

    def param_lr_scales(self) -> dict[str, float]:
        if self.range_augment is None or self.cfg.range_augment.lr_scale == 1.0:
            return {}
        return {f"range_augment.{name}": self.cfg.range_augment.lr_scale
                for name, _ in self.range_augment.named_parameters()}

    def augment(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """RangeAugment on a normalised train batch (B, C, H, W): denormalised to [0, 1] for the ops and
        the PSNR, renormalised after. Returns the images (input dtype) and ``ra_``-prefixed logs, among
        them ``ra_loss`` (the unweighted auxiliary loss)."""
        mean, std = self.cfg.mean, self.cfg.std
        augmented, aux, stats = self.range_augment(images.float() * std + mean)
        logs = {"ra_loss": aux, **{f"ra_{k}": v for k, v in stats.items()}}
        return ((augmented.float() - mean) / std).to(images.dtype), logs

    def forward(self, batch: dict[str, Any], mode: str = "train") -> dict[str, torch.Tensor]:
        images, logs = batch["image"], {}
        if mode != "eval" and self.range_augment is not None:
            images, logs = self.augment(images)
        logits = self.model(images).float()
        labels = batch["label"]
        if mode == "eval":
            return {
                "correct": (logits.argmax(-1) == labels).sum().float(),
                "count": logits.new_full((), labels.numel()),
                "loss_sum": F.cross_entropy(logits, labels, reduction="sum"),
            }
        loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)
        acc = (logits.argmax(-1) == labels).float().mean()
        if "teacher_index" in batch:
            kd = kd_loss(logits, batch["teacher_index"], batch["teacher_logits"], self.cfg.distill.temperature)
            w = self.cfg.distill.label_weight
            logs = {**logs, "ce": loss.detach(), "kd": kd.detach()}
            loss = w * loss + (1 - w) * kd
        if "ra_loss" in logs:
            logs.setdefault("ce", loss.detach())
            loss = loss + self.cfg.range_augment.loss_weight * logs["ra_loss"]
            logs["ra_loss"] = logs["ra_loss"].detach()
        return {"loss": loss, "acc": acc, **logs}

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("count", 0.0), 1.0)
        return {"accuracy": sums["correct"] / n, "loss": sums["loss_sum"] / n, "samples": sums["count"]}


def input_from_model(cfg: Any, model: torch.nn.Module, defaults: dict[str, int]) -> Any:
    """``cfg`` with each of its input fields (``image_size``, ``channels``) that is None taken from the
    model (``image_size``, ``in_chans``), else from ``defaults``; a field set to something the model
    contradicts is a one-line error (the model's value is the one the weights were built for)."""
    values = {}
    for name, attr in (("image_size", "image_size"), ("channels", "in_chans")):
        ours, theirs = getattr(cfg, name), getattr(model, attr, None)
        if ours is not None and theirs is not None and ours != theirs:
            raise ConfigError(f"task.{name} is {ours} but model.{attr} is {theirs}: leave task.{name} out "
                              "(it follows the model) or make them equal")
        values[name] = ours if ours is not None else theirs if theirs is not None else defaults[name]
    if values["channels"] not in (1, 3):
        raise ConfigError(f"task.channels must be 1 or 3, got {values['channels']}")
    if values["image_size"] < 1:
        raise ConfigError(f"task.image_size must be positive, got {values['image_size']}")
    return dataclasses.replace(cfg, **values)


@register_task("classification", ClassificationConfig)
def build_classification(cfg: ClassificationConfig, model: torch.nn.Module, context: TaskContext) -> Task:
    if cfg.distill.enabled:
        check_distill(cfg, model_num_classes(model), context.train_data)
    return ClassificationTask(input_from_model(cfg, model, {"image_size": 32, "channels": 3}), model)


def check_distill(cfg: ClassificationConfig, num_classes: int | None, train_data: str) -> None:
    """One-line errors, before any step, for a distillation recipe that cannot work as written."""
    from corefm.data import DataError, load_manifest
    from corefm.data.reinforce import PRODUCER

    d = cfg.distill
    if d.temperature <= 0 or not 0 <= d.label_weight <= 1:
        raise ConfigError(f"task.distill: temperature must be > 0 and label_weight in [0, 1], got "
                          f"{d.temperature}, {d.label_weight}")
    if cfg.max_shift:
        raise ConfigError("task.max_shift does not apply with task.distill (the stored views are the augmentation): "
                          "set it to 0")
    try:
        producer = load_manifest(train_data.split("::")[0].split("#")[0]).producer if train_data else {}
    except DataError:
        return  # a pattern or URL without a local manifest: the samples are checked as they come
    if producer.get("name") != PRODUCER:
        raise ConfigError(f"task.distill needs reinforced train shards (corefm data reinforce); {train_data} "
                          "was not written by it")
    teacher_classes = producer.get("teacher", {}).get("num_classes")
    if num_classes is not None and teacher_classes is not None and teacher_classes != num_classes:
        raise ConfigError(f"the teacher of {train_data} has {teacher_classes} classes, the model {num_classes}")
