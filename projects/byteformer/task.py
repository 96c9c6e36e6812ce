"""``byte_classification``: classify images and audio from their file bytes (one model, any mix).

Per sample (in the data workers): find the image or audio member, decode and augment it,
encode it into file bytes (``task.image_encoding`` / ``task.audio_encoding``, or ``raw`` to keep
the stored file), apply ``task.byte_transforms``, and check ``max_bytes``. Collate right-pads the
byte strings to the batch's longest with PAD (256) and passes the true lengths, which the model
turns into its padding mask. Audio labels may be offset (``audio_label_offset``) so that one
classifier covers image classes and audio classes at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from corefm.data.errors import SkipSample
from corefm.errors import ConfigError
from corefm.registry import register_task
from corefm.tasks.base import Task, TaskContext, model_num_classes, read_label
from projects.byteformer.model import PAD
from projects.byteformer.pipeline import MODALITIES, BytePipeline


@dataclass
class ByteClassificationConfig:
    # Images: fhwc | fchw | tiff | png | jpeg | raw (the stored file's bytes).
    image_encoding: str = "tiff"
    jpeg_quality: int = 100
    channels: Literal[1, 3] = 1
    image_size: int = 0  # resize to a square of this size first; 0 keeps the stored size
    max_shift: int = 0  # train: random pixel shift of up to this many pixels
    hflip: bool = False  # train: random horizontal flips
    # The paper's ImageNet augmentations (CoreNet's, from torchvision), before the image is encoded:
    random_resized_crop: bool = False  # train: RandomResizedCrop to image_size (scale 0.08-1, bicubic)
    eval_resize: int = 0  # eval: shorter side to this, then a centre crop of image_size (0: resize to image_size)
    rand_augment: bool = False  # train: RandAugment (2 ops at magnitude 9)
    random_erase: float = 0.0  # train: probability of RandomErasing a patch
    # Audio: wav | mp3 | raw.
    audio_encoding: str = "wav"
    wav_dtype: Literal["float32", "int16", "uint8"] = "int16"
    mp3_compression: float = 0.5
    sample_rate: int = 8000
    audio_seconds: float = 1.0  # crop or pad clips to this length (train: random position); 0 keeps it
    gain_db: float = 0.0  # train: random gain in +-gain_db
    # Applied to the encoded bytes, in order, e.g. [{name: permute, seed: 3}] (see byte_transforms.py).
    byte_transforms: list[dict] = field(default_factory=list)
    # Longest byte string accepted; 0 = the model's max_bytes. Longer training samples are skipped.
    max_bytes: int = 0
    audio_label_offset: int = 0  # added to audio samples' cls (joint image + audio label space)
    label_smoothing: float = 0.0
    # Class names for releases and `corefm byteformer predict`; empty: taken from the shards' dataset.json.
    class_names: list[str] = field(default_factory=list)


def collate_bytes(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Samples with ``bytes`` (N_i,) uint8 -> ``bytes`` (B, max N_i) long right-padded with PAD,
    ``lengths`` (B,), ``label`` (B,), ``modality`` (B,) (0 image, 1 audio)."""
    lengths = torch.tensor([len(s["bytes"]) for s in samples], dtype=torch.long)
    out = torch.full((len(samples), int(lengths.max())), PAD, dtype=torch.long)
    for i, s in enumerate(samples):
        out[i, : len(s["bytes"])] = torch.from_numpy(np.asarray(s["bytes"], dtype=np.int64))
    batch = {"bytes": out, "lengths": lengths,
             "modality": torch.tensor([s["modality"] for s in samples], dtype=torch.long)}
    if "label" in samples[0]:
        batch["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    return batch


class SampleTransform:
    """Picklable ``raw shard sample -> {"bytes", "modality", "label"}`` for the loader's workers."""

    def __init__(self, cfg: ByteClassificationConfig, max_bytes: int, train: bool, labelled: bool = True,
                 num_classes: int | None = None):
        self.pipeline = BytePipeline(cfg, max_bytes, train)
        self.offset, self.labelled, self.num_classes = cfg.audio_label_offset, labelled, num_classes

    def __call__(self, sample: dict) -> dict:
        if self.labelled and "cls" not in sample:
            raise SkipSample(f"sample {sample.get('__key__')} has no 'cls' label")
        data, modality = self.pipeline(sample)
        out = {"bytes": data, "modality": modality}
        if self.labelled:
            where = f"sample {sample.get('__key__')}"
            out["label"] = read_label(read_label(sample["cls"], None, where) + (self.offset if modality == 1 else 0),
                                      self.num_classes, where)
        return out


class ByteClassificationTask(Task):
    def __init__(self, cfg: ByteClassificationConfig, model: torch.nn.Module, max_bytes: int):
        super().__init__(model)
        self.cfg, self.max_bytes = cfg, max_bytes
        self.sample_transform(False)  # a bad encoding or transform name fails here, before any worker starts

    def sample_transform(self, train: bool, labelled: bool = True) -> Callable[[dict], dict]:
        try:
            return SampleTransform(self.cfg, self.max_bytes, train, labelled, model_num_classes(self.model))
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def collate(self, samples: list[dict]) -> dict:
        return collate_bytes(samples)

    def forward(self, batch: dict[str, Any], mode: str = "train") -> dict[str, torch.Tensor]:
        logits = self.model(batch["bytes"], batch["lengths"]).float()
        labels = batch["label"]
        if mode == "eval":
            right = logits.argmax(-1) == labels
            out = {"correct": right.sum().float(), "count": right.new_full((), labels.numel(), dtype=torch.float32),
                   "loss_sum": F.cross_entropy(logits, labels, reduction="sum")}
            for i, name in enumerate(MODALITIES):
                is_m = batch["modality"] == i
                out[f"correct_{name}"] = (right & is_m).sum().float()
                out[f"count_{name}"] = is_m.sum().float()
            return out
        loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)
        acc = (logits.argmax(-1) == labels).float().mean()
        return {"loss": loss, "acc": acc, "num_tokens": batch["lengths"].sum().float()}

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("count", 0.0), 1.0)
        out = {"accuracy": sums["correct"] / n, "loss": sums["loss_sum"] / n, "samples": sums["count"]}
        for name in MODALITIES:
            if sums.get(f"count_{name}", 0.0) and sums[f"count_{name}"] < sums["count"]:
                out[f"accuracy_{name}"] = sums[f"correct_{name}"] / sums[f"count_{name}"]
        return out


@register_task("byte_classification", ByteClassificationConfig)
def build_byte_classification(cfg: ByteClassificationConfig, model: torch.nn.Module,
                              context: TaskContext) -> Task:
    if (cfg.random_resized_crop or cfg.eval_resize) and not cfg.image_size:
        raise ConfigError("task.random_resized_crop and task.eval_resize need task.image_size (the crop's size)")
    if not 0.0 <= cfg.random_erase <= 1.0:
        raise ConfigError(f"task.random_erase is a probability, got {cfg.random_erase}")
    model_max = getattr(model, "max_bytes", 0)  # ByteFormer's position table length; a ViT has none
    max_bytes = cfg.max_bytes or model_max
    if not max_bytes:
        raise ConfigError("task.max_bytes: set it (the model has no max_bytes to default to)")
    if model_max and max_bytes > model_max:
        raise ConfigError(f"task.max_bytes ({max_bytes}) exceeds model.max_bytes ({model_max})")
    return ByteClassificationTask(cfg, model, max_bytes)
