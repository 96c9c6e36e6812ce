"""SAM-CLIP's distillation losses: (1 - cosine) for CLIP, focal + dice for SAM masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(student, teacher) over rows; student/teacher (N, E)."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """SAM's dice loss: logits/target (N, H, W) -> mean over masks of 1 - (2|p t| + 1) / (|p| + |t| + 1)."""
    p = logits.float().sigmoid().flatten(1)
    t = target.float().flatten(1)
    return (1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """torchvision's sigmoid focal loss averaged over pixels and masks (SAM's alpha 0.25, gamma 2)."""
    return sigmoid_focal_loss(logits.float(), target.float(), alpha=alpha, gamma=gamma, reduction="mean")


def mask_loss(logits: torch.Tensor, target: torch.Tensor, focal_weight: float = 1.0,
              dice_weight: float = 1.0) -> torch.Tensor:
    """focal_weight x focal + dice_weight x dice on (N, H, W) logits against 0/1 targets (teacher masks
    or ground truth); SAM itself trained at 20:1."""
    return focal_weight * focal_loss(logits, target) + dice_weight * dice_loss(logits, target)


def distill_loss(clip_student: torch.Tensor, clip_teacher: torch.Tensor, mask_logits: torch.Tensor,
                 mask_target: torch.Tensor, sam_weight: float = 10.0, focal_weight: float = 1.0,
                 dice_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """The paper's loss: (1 - cos) + sam_weight * mask_loss; empty inputs contribute 0."""
    zero = mask_logits.new_zeros(()) if mask_logits.numel() else clip_student.new_zeros(())
    clip = cosine_loss(clip_student, clip_teacher) if clip_student.numel() else zero
    sam = mask_loss(mask_logits, mask_target, focal_weight, dice_weight) if mask_logits.numel() else zero
    return {"loss": clip + sam_weight * sam, "loss_clip": clip, "loss_sam": sam}


def iou_sums(logits: torch.Tensor, target: torch.Tensor,
             keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over masks of IoU(logits > 0, target), number of masks); masks (N, H, W), ``keep`` (N,)
    bool counts only those masks (a mask, not an index: indexing would wait for the device).
    Two empty masks count as IoU 1."""
    pred = logits > 0
    tgt = target > 0.5
    inter = (pred & tgt).flatten(1).sum(-1).float()
    union = (pred | tgt).flatten(1).sum(-1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    if keep is None:
        return iou.sum(), iou.new_full((), len(iou), dtype=torch.float32)
    return (iou * keep).sum(), keep.sum().float()


def prompt_iou_sums(logits: torch.Tensor, target: torch.Tensor, k: int,
                    rows: torch.Tensor | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"point" | "box": iou_sums over those prompts}; logits and target (N, 2K, m, m), K point prompts
    first, then K box prompts (a ground-truth mask per image is expanded to (N, 2K, m, m)); ``rows``
    (N,) bool counts only those images."""
    keep = None if rows is None else rows[:, None].expand(-1, k).flatten()
    return {name: iou_sums(logits[:, sl].flatten(0, 1), target[:, sl].flatten(0, 1), keep)
            for name, sl in (("point", slice(0, k)), ("box", slice(k, 2 * k)))}


def zero_shot_counts(embeddings: torch.Tensor, classifier: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, counted) top-1 over rows with a label >= 0; embeddings (N, E), classifier (E, C)."""
    known = labels >= 0
    pred = (F.normalize(embeddings.float(), dim=-1) @ classifier).argmax(-1)
    return ((pred == labels) & known).sum().float(), known.sum().float()
