"""``clip`` task: contrastive image-text loss plus weighted, masked pseudo-label losses.

loss = CLIP (or SigLIP) loss + sum_i weight_i * task_loss_i, where task_loss_i averages over the
samples whose shard holds head i's label (``mask_<name>``). ``task.heads: []`` is plain CLIP.
Eval returns additive sums: in-batch contrastive loss, zero-shot top-1/top-5 on ``cls`` labels
(open_clip's classifier builder, rebuilt from the current text tower once per eval pass), and per
head the sums behind mIoU (segmentation), IoU (binary maps) or MAE/RMSE (regression).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from corefm.data.errors import SkipSample
from corefm.data.manifest import manifest_classes
from corefm.errors import ConfigError
from corefm.registry import register_task
from corefm.tasks.base import Task, TaskContext
from corefm.train.grad_cache import surrogate
from projects.clip_pseudo.heads import HeadSpec, check_heads
from projects.clip_pseudo.labels import caption, find_image, image_tensor, labels_for, random_box
from projects.clip_pseudo.losses import build_contrastive_loss, masked_mean, per_sample_loss
from projects.clip_pseudo.model import LOGIT_SCALE_BOUNDS, eot_length
from projects.clip_pseudo.openclip_io import OPENAI_MEAN, OPENAI_STD
from corefm.eval.zero_shot import classifier, topk_correct


@dataclass
class ClipTaskConfig:
    loss: Literal["clip", "siglip"] = "clip"
    local_loss: bool = True  # ClipLoss: only this rank's rows of the global logits
    gather_with_grad: bool = True  # ClipLoss: gradients flow through the other ranks' features
    caption_key: str = "txt"
    mean: list[float] = field(default_factory=lambda: list(OPENAI_MEAN))
    std: list[float] = field(default_factory=lambda: list(OPENAI_STD))
    hflip: bool = False  # train: random horizontal flips of image and labels together
    # train: RandomResizedCrop of image and labels together, area fraction in this range (open_clip's
    # training transform: [0.9, 1.0]); []: the eval transform (shortest side, centre crop)
    random_resized_crop: list[float] = field(default_factory=list)
    heads: list[HeadSpec] = field(default_factory=list)  # [] = plain CLIP
    # Zero-shot eval on the val shards' `cls`: class names (empty: the val manifest's producer
    # "classes", if any) and templates (simple / openai: open_clip's ImageNet sets, or a list).
    class_names: list[str] = field(default_factory=list)
    templates: str | list[str] = "simple"
    label_key: str = "cls"


class SampleTransform:
    """Picklable raw sample -> {image, text, label, label_<head>, mask_<head>} for the data workers."""

    def __init__(self, cfg: ClipTaskConfig, image_size: int, context_length: int, sizes: dict[str, int],
                 train: bool, keep_caption: bool = False) -> None:
        self.cfg, self.image_size, self.context_length, self.sizes = cfg, image_size, context_length, sizes
        self.train, self.keep_caption = train, keep_caption  # keep_caption: retrieval eval matches by text
        self._tokenizer = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}  # each worker builds its own (cheap, not picklable state)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from open_clip import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        return self._tokenizer

    def __call__(self, sample: dict) -> dict:
        cfg = self.cfg
        text = caption(sample, cfg.caption_key)
        img = find_image(sample)
        # the loader seeds python's RNG per batch, so a resumed run replays the same flips
        flip = self.train and cfg.hflip and random.random() < 0.5
        box = random_box(img, tuple(cfg.random_resized_crop)) if self.train and cfg.random_resized_crop else None
        out = {"image": image_tensor(img, self.image_size, tuple(cfg.mean), tuple(cfg.std), flip, box),
               "text": self.tokenizer([text])[0]}
        if self.keep_caption:
            out["caption"] = text
        label = sample.get(cfg.label_key)
        try:
            out["label"] = torch.tensor(int(label.decode() if isinstance(label, bytes) else label)
                                        if label is not None else -1)
        except ValueError:
            raise SkipSample(f"bad .{cfg.label_key} {label!r} in {sample.get('__key__')}") from None
        out.update(labels_for(sample, cfg.heads, self.sizes, flip, box))
        return out


class ClipTask(Task):
    def __init__(self, cfg: ClipTaskConfig, model: torch.nn.Module, class_names: list[str]) -> None:
        super().__init__(model)
        self.cfg, self.class_names = cfg, class_names
        check_heads(cfg.heads)
        model.set_heads(cfg.heads)
        self.sizes = {s.name: s.label_size or model.cfg.image_size for s in cfg.heads}
        self.loss_fn: torch.nn.Module | None = None  # built on first use: the process group exists then
        self._zs_weights: torch.Tensor | None = None
        self._tokenizer = None

    def sample_transform(self, train: bool) -> Callable[[dict], dict]:
        return SampleTransform(self.cfg, self.model.cfg.image_size, self.model.cfg.context_length, self.sizes, train)

    def collate(self, samples: list[dict]) -> dict:
        """Stacked samples, the captions cut after the batch's last end-of-text token (see
        ``ClipModel.encode_text``): done here, on the host, it costs no device sync."""
        batch = torch.utils.data.default_collate(samples)
        batch["text"] = batch["text"][:, : eot_length(batch["text"])]
        return batch

    def train(self, mode: bool = True) -> "ClipTask":
        self._zs_weights = None  # the text tower changes between eval passes
        return super().train(mode)

    # The contrastive loss couples a batch's samples: under grad_accum the trainer caches gradients.
    couples_samples = True

    def parameter_bounds(self) -> dict[str, tuple[float | None, float | None]]:
        return {"model.logit_scale": LOGIT_SCALE_BOUNDS}

    def forward(self, batch: dict[str, Any], mode: str = "train",
                embed_grads: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``mode="train"``: loss and logs. ``mode="eval"``: additive metric sums. ``mode="embed"``: the
        tensors the contrastive loss reads (features (B, E), logit scale (1,), bias). With
        ``embed_grads`` (the contrastive loss's gradients for those tensors, from
        :meth:`coupled_loss` over all micro-batches): a loss whose backward hands them on, plus this
        micro-batch's head losses (``sample_loss``)."""
        out = self.model(batch["image"], batch["text"], {} if mode == "embed" else self.sizes)
        feats = (out.image_features.float(), out.text_features.float(), out.logit_scale.float(),
                 out.logit_bias.float() if out.logit_bias is not None else None)
        if mode == "embed":
            return self._embeds(feats)
        if mode == "eval":
            return self._eval_sums(batch, out, feats)
        heads, logs = self._head_losses(out, batch)
        if embed_grads is not None:
            return {"loss": surrogate(self._embeds(feats), embed_grads) + heads, "sample_loss": heads, **logs}
        coupled = self.coupled_loss([self._embeds(feats)])
        return {**coupled, "loss": coupled["loss"] + heads, **logs}

    @staticmethod
    def _embeds(feats: tuple) -> dict[str, torch.Tensor]:
        names = ("image_features", "text_features", "logit_scale", "logit_bias")
        return {n: t for n, t in zip(names, feats) if t is not None}

    def coupled_loss(self, embeds: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """open_clip's contrastive loss over the rows of every micro-batch (and, through its gather,
        every rank). The scale and bias are the same parameters in each micro-batch: their mean."""
        if self.loss_fn is None:  # built on first use: the process group exists then
            self.loss_fn = build_contrastive_loss(self.cfg.loss, self.cfg.local_loss, self.cfg.gather_with_grad)
        image = torch.cat([e["image_features"] for e in embeds])
        text = torch.cat([e["text_features"] for e in embeds])
        scale = torch.stack([e["logit_scale"] for e in embeds]).mean(0)
        bias = torch.stack([e["logit_bias"] for e in embeds]).mean(0) if "logit_bias" in embeds[0] else None
        loss = self.loss_fn(image, text, scale, bias)
        return {"loss": loss, "clip_loss": loss.detach(), "logit_scale": scale.detach().reshape(())}

    def _head_losses(self, out, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted sum of the dense heads' masked mean losses (0 without heads), and their logs."""
        total, logs = out.image_features.new_zeros((), dtype=torch.float32), {}
        for spec in self.cfg.heads:
            loss = masked_mean(per_sample_loss(spec, out.dense[spec.name], batch[f"label_{spec.name}"]),
                               batch[f"mask_{spec.name}"])
            total = total + spec.weight * loss
            logs[f"loss_{spec.name}"] = loss.detach()
        return total, logs

    def _eval_sums(self, batch: dict, out, feats) -> dict[str, torch.Tensor]:
        from open_clip.loss import ClipLoss, SigLipLoss

        # A single-rank loss: eval batches differ in size across ranks, so no collective may run here.
        local = SigLipLoss() if self.cfg.loss == "siglip" else ClipLoss()
        n = float(batch["image"].shape[0])
        sums = {"count": feats[0].new_full((), n), "clip_loss_sum": local(*feats) * n}
        labels = batch["label"]
        if self.class_names:
            if self._zs_weights is None:
                if self._tokenizer is None:
                    from open_clip import SimpleTokenizer

                    self._tokenizer = SimpleTokenizer(context_length=self.model.cfg.context_length)
                self._zs_weights = classifier(self.model, self._tokenizer, self.class_names, self.cfg.templates)
            known = labels >= 0
            hits = topk_correct(feats[0][known], self._zs_weights, labels[known])
            sums.update(zs_top1=hits[1], zs_top5=hits[5], zs_count=known.sum().float())
        for spec in self.cfg.heads:
            sums.update(head_sums(spec, out.dense[spec.name].float(), batch[f"label_{spec.name}"],
                                  batch[f"mask_{spec.name}"] > 0))
        return sums

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("count", 0.0), 1.0)
        out = {"clip_loss": sums["clip_loss_sum"] / n, "samples": sums["count"]}
        if sums.get("zs_count"):
            out["zero_shot_top1"] = sums["zs_top1"] / sums["zs_count"]
            out["zero_shot_top5"] = sums["zs_top5"] / sums["zs_count"]
        for spec in self.cfg.heads:
            out.update(head_metrics(spec, sums))
        return out


def head_sums(spec: HeadSpec, pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """Additive statistics of one head over the samples with a label (keep: (B,) bool)."""
    pred, target, name = pred[keep], target[keep], spec.name
    if spec.kind == "segmentation":
        cls = pred.argmax(1)
        valid = target != spec.ignore_index
        out = {}
        for c in range(spec.channels):
            p, t = (cls == c) & valid, (target == c) & valid
            out[f"{name}_inter_{c}"] = (p & t).sum().float()
            out[f"{name}_union_{c}"] = (p | t).sum().float()
        return out
    if spec.kind == "binary":
        p, t = pred > 0, target > 0.5
        return {f"{name}_tp": (p & t).sum().float(), f"{name}_fp": (p & ~t).sum().float(),
                f"{name}_fn": (~p & t).sum().float()}
    err = pred - target
    if spec.ignore_zero:  # masked rather than indexed: indexing by a mask waits for the device to count it
        keep = target != 0
        err, n = err * keep, keep.sum().float()
    else:
        n = err.new_full((), err.numel(), dtype=torch.float32)
    return {f"{name}_abs": err.abs().sum(), f"{name}_sq": err.pow(2).sum(), f"{name}_n": n}


def head_metrics(spec: HeadSpec, sums: dict[str, float]) -> dict[str, float]:
    name = spec.name
    if spec.kind == "segmentation":
        ious = [sums[f"{name}_inter_{c}"] / sums[f"{name}_union_{c}"] for c in range(spec.channels)
                if sums.get(f"{name}_union_{c}", 0.0) > 0]
        return {f"{name}_miou": sum(ious) / len(ious)} if ious else {}
    if spec.kind == "binary":
        tp, fp, fn = sums[f"{name}_tp"], sums[f"{name}_fp"], sums[f"{name}_fn"]
        return {f"{name}_iou": tp / max(tp + fp + fn, 1.0), f"{name}_f1": 2 * tp / max(2 * tp + fp + fn, 1.0)}
    count = max(sums[f"{name}_n"], 1.0)
    return {f"{name}_mae": sums[f"{name}_abs"] / count, f"{name}_rmse": math.sqrt(sums[f"{name}_sq"] / count)}


@register_task("clip", ClipTaskConfig)
def build_clip_task(cfg: ClipTaskConfig, model: torch.nn.Module, context: TaskContext) -> Task:
    if not hasattr(model, "set_heads"):
        raise ConfigError(f"task clip needs model.name: clip, got a {type(model).__name__}")
    if cfg.loss == "siglip" and model.logit_bias is None:
        raise ConfigError("task.loss: siglip needs a logit bias: set model.init_logit_bias (e.g. -10) "
                          "and model.init_logit_scale (e.g. 2.302585, log 10)")
    crop = cfg.random_resized_crop
    if crop and not (len(crop) == 2 and 0 < crop[0] <= crop[1] <= 1):
        raise ConfigError(f"task.random_resized_crop: [min, max] area fractions in (0, 1], got {crop}")
    class_names = list(cfg.class_names) or manifest_classes(context.val_data)
    return ClipTask(cfg, model, class_names)
