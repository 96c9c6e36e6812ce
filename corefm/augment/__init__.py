"""Learned data augmentation run on the device inside a task's forward (RangeAugment)."""

from corefm.augment.range_augment import OPS, PSNR_CAP, OpSpec, RangeAugment, RangeAugmentConfig, warp_affine

__all__ = ["OPS", "PSNR_CAP", "OpSpec", "RangeAugment", "RangeAugmentConfig", "warp_affine"]
