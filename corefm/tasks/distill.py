"""Training on reinforced shards (``corefm data reinforce``): stored views and the teacher's top-k logits.

Each visit of a sample picks one of its N stored augmentations (the loader seeds python's RNG
per batch, so a resumed run picks the same), replays it exactly (:mod:`corefm.augment.replay`) at
the student's size, and returns that view's top-k teacher logits. The loss is the knowledge-
distillation KL divergence on the teacher's top-k support (the teacher's distribution renormalised
over its k stored classes, as the reinforced ImageNet+ data stores it), times T^2 so the gradient
scale does not depend on the temperature.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from corefm.augment.replay import apply, to_tensor
from corefm.data.errors import SkipSample


@dataclass
class DistillConfig:
    # On: train samples must carry reinforce.json (corefm data reinforce).
    enabled: bool = False
    temperature: float = 1.0
    # loss = label_weight * cross-entropy(cls) + (1 - label_weight) * KD; 0 = the teacher alone
    label_weight: float = 0.0


def reinforced_view(sample: dict, image, size: int, mean: float | list[float], std: float | list[float],
                    num_classes: int, rng: random.Random | None = None) -> dict[str, torch.Tensor]:
    """One stored view of ``image`` (a PIL image, the sample's own) and its teacher logits:
    {"image": (C, size, size), "teacher_index": (k,) long, "teacher_logits": (k,) float32}."""
    where = f"sample {sample.get('__key__')}"
    if "reinforce.json" not in sample:
        raise SkipSample(f"{where} is not reinforced (task.distill needs shards from `corefm data reinforce`)")
    meta = sample["reinforce.json"]
    try:
        meta = json.loads(meta) if isinstance(meta, (bytes, bytearray, str)) else meta
        augs = meta["augs"]
        index = torch.tensor(meta["index"], dtype=torch.long)
        logits = torch.tensor(meta["logits"], dtype=torch.float32)
    except (ValueError, TypeError, KeyError):
        raise SkipSample(f"{where}: bad reinforce.json") from None
    if not augs or index.ndim != 2 or index.shape != logits.shape or index.shape[0] != len(augs):
        raise SkipSample(f"{where}: reinforce.json's views, indices and logits disagree in shape")
    if index.min() < 0 or index.max() >= num_classes:
        raise SkipSample(f"{where}: teacher class outside 0..{num_classes - 1}")
    j = (rng or random).randrange(len(augs))
    return {"image": to_tensor(apply(image, augs[j], size), mean, std), "teacher_index": index[j],
            "teacher_logits": logits[j]}


def kd_loss(student: torch.Tensor, index: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """student (B, C) logits; index, teacher_logits (B, k) -> mean over the batch of
    T^2 * KL(p || q): p the teacher's softmax over its k classes (zero elsewhere), q the student's
    softmax over all C, both at temperature T."""
    t = temperature
    p_teacher = F.softmax(teacher_logits.float() / t, dim=-1)
    log_student = F.log_softmax(student.float() / t, dim=-1).gather(1, index)
    return (t * t) * (p_teacher * (p_teacher.clamp(min=1e-12).log() - log_student)).sum(-1).mean()
