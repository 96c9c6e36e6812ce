"""Loss values on hand-made tensors."""

from __future__ import annotations

import math

import torch

from projects.sam_clip.losses import cosine_loss, dice_loss, distill_loss, focal_loss, iou_sums, mask_loss


def test_cosine_loss():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    assert math.isclose(float(cosine_loss(a, b)), (1.0 + 0.0) / 2, abs_tol=1e-6)


def test_dice_and_focal_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])  # p = 0.5 everywhere
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # dice: 1 - (2 * 0.5 + 1) / (2 + 1 + 1)
    assert math.isclose(float(dice_loss(logits, target)), 1 - 2 / 4, abs_tol=1e-6)
    # focal at p = 0.5: ce = ln 2, (1 - p_t)^2 = 0.25; alpha 0.25 on the positive, 0.75 on the 3 negatives
    want = (0.25 * 0.25 * math.log(2) + 3 * 0.75 * 0.25 * math.log(2)) / 4
    assert math.isclose(float(focal_loss(logits, target)), want, rel_tol=1e-5)


def test_distill_loss_weights_sam_by_ten_and_skips_empty_parts():
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    logits = torch.zeros(2, 4, 4)
    target = torch.ones(2, 4, 4)
    out = distill_loss(s, t, logits, target)
    sam = float(focal_loss(logits, target) + dice_loss(logits, target))
    assert math.isclose(float(out["loss"]), 1.0 + 10 * sam, rel_tol=1e-6)
    only_clip = distill_loss(s, t, torch.zeros(0, 4, 4), torch.zeros(0, 4, 4))
    assert float(only_clip["loss"]) == 1.0 and float(only_clip["loss_sam"]) == 0.0


def test_focal_dice_ratio_is_a_knob():
    logits, target = torch.randn(3, 8, 8), (torch.rand(3, 8, 8) > 0.5).float()
    focal, dice = float(focal_loss(logits, target)), float(dice_loss(logits, target))
    assert math.isclose(float(mask_loss(logits, target)), focal + dice, rel_tol=1e-6)
    assert math.isclose(float(mask_loss(logits, target, 20.0, 1.0)), 20 * focal + dice, rel_tol=1e-6)
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    out = distill_loss(s, t, logits, target, sam_weight=10.0, focal_weight=20.0, dice_weight=1.0)
    assert math.isclose(float(out["loss"]), 10 * (20 * focal + dice), rel_tol=1e-5)


def test_iou_sums():
    logits = torch.tensor([[[1.0, -1.0], [1.0, -1.0]], [[-1.0, -1.0], [-1.0, -1.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    total, n = iou_sums(logits, target)
    assert math.isclose(float(total), 1 / 3 + 1.0, rel_tol=1e-6) and float(n) == 2
