"""RangeAugment (Mehta et al. 2022, arXiv 2212.10553): augmentation with learned magnitude ranges.

Each operation has a magnitude range ``[lo, hi]`` held as two trainable parameters. Per sample a
magnitude is drawn as ``m = lo + u * (hi - lo)`` with ``u ~ U(0, 1)``, so every image operation below
(all differentiable in ``m``) passes gradients to ``lo`` and ``hi``. An auxiliary loss pulls the PSNR
between the augmented and the original batch towards one target (``target_psnr``, the recipe's single
knob; the loss is zero exactly there): a low target asks for more distortion (the ranges widen), a high
one for less (they shrink).
The ranges train with the model (task loss + ``loss_weight`` * auxiliary loss); see README.md here
for which defaults come from the paper / CoreNet and which are ours.

Images are ``(B, C, H, W)`` in [0, 1] (C = 1 or 3); the caller denormalises before and renormalises
after. Everything is computed in fp32 and returned in the input's dtype. Only deterministic,
device-agnostic ops are used (no ``grid_sample``: its CUDA backward refuses
``torch.use_deterministic_algorithms``; the affine warp gathers its four neighbours itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from corefm.errors import ConfigError

OpName = Literal["brightness", "contrast", "noise", "sharpness", "saturation", "hue", "rotate", "translate",
                 "scale"]


class OpSpec(NamedTuple):
    """One operation: its identity magnitude, the range's limits and default initial value, and
    whether it needs colour / is geometric. ``lo`` may take ``[low, identity - gap]`` and ``hi``
    ``[identity + gap, high]`` (:attr:`lo_bounds`, :attr:`hi_bounds`), so ``lo < identity < hi`` always
    holds. The gap keeps every op alive: at a range of exactly ``[identity, identity]`` the op would
    leave every image unchanged and its gradient would be 0 for good (the task loss pushes the ranges
    towards the identity). At the gap an op alone still scores above ~50 dB (geometric gaps are
    smaller, as a sub-pixel shift already costs much on fine texture), so targets up to ~45 dB are
    reachable with every op on."""

    identity: float
    gap: float
    low: float
    high: float
    init: tuple[float, float]
    colour: bool = False
    geometric: bool = False

    @property
    def lo_bounds(self) -> tuple[float, float]:
        return (self.low, self.identity - self.gap)

    @property
    def hi_bounds(self) -> tuple[float, float]:
        return (self.identity + self.gap, self.high)


# Magnitudes are O(1) numbers so that one optimizer step moves every op by a comparable amount.
OPS: dict[str, OpSpec] = {
    # x * m. Init [0.5, 1.5] and the limits 0.1 / 10 are CoreNet's (its gap is 0.1).
    "brightness": OpSpec(1.0, 0.005, 0.1, 10.0, (0.5, 1.5)),
    # mean + m * (x - mean), mean per image and channel (as CoreNet). Same range facts as brightness.
    "contrast": OpSpec(1.0, 0.005, 0.1, 10.0, (0.5, 1.5)),
    # x + m * N(0, 1) per pixel. m is a signed standard deviation (the noise is symmetric, so the sign
    # is immaterial): |m| ~ U(0, 0.1) at init, as CoreNet's noise range [0, 0.1]; max std 1 is CoreNet's.
    "noise": OpSpec(0.0, 0.001, -1.0, 1.0, (-0.1, 0.1)),
    # blur + m * (x - blur) with PIL's 3x3 smoothing kernel, borders kept (m < 1 blurs, > 1 sharpens).
    "sharpness": OpSpec(1.0, 0.005, 0.0, 5.0, (0.5, 1.5)),
    # gray + m * (x - gray), gray the ITU-R 601 luma. RGB only.
    "saturation": OpSpec(1.0, 0.005, 0.0, 5.0, (0.5, 1.5), colour=True),
    # rotation of the chroma plane in YIQ by m turns (a linear stand-in for an HSV hue shift). RGB only.
    "hue": OpSpec(0.0, 0.001, -0.5, 0.5, (-0.05, 0.05), colour=True),
    # radians about the image centre.
    "rotate": OpSpec(0.0, 1e-4, -math.pi, math.pi, (-0.1, 0.1), geometric=True),
    # fraction of the image side; x and y shifts are drawn independently from the same range.
    "translate": OpSpec(0.0, 1e-4, -0.5, 0.5, (-0.1, 0.1), geometric=True),
    # zoom factor (> 1 zooms in); uncovered pixels are 0 (black).
    "scale": OpSpec(1.0, 1e-4, 0.25, 4.0, (0.8, 1.2), geometric=True),
}

PSNR_CAP = 100.0  # dB: the PSNR reported for an unchanged batch (MSE floored at 1e-10)


@dataclass
class RangeAugmentConfig:
    # Off unless true (a nested section is always present in the recipe; off keeps the task as before).
    enabled: bool = False
    # Operations, applied in this order (photometric ones first, then all geometric ones as one warp).
    ops: list[OpName] = field(default_factory=lambda: ["brightness", "contrast", "noise"])
    # The knob: the PSNR (dB, images in [0, 1]) the augmented batch should have against the original.
    target_psnr: float = 20.0
    # Weight of the auxiliary loss added to the task loss.
    loss_weight: float = 1.0
    # Probability that an op is applied to a sample (CoreNet applies each op to half of the batch).
    apply_prob: float = 0.5
    # Learning-rate multiplier for the range parameters (CoreNet's lr_multiplier, default 1).
    lr_scale: float = 1.0
    # Initial [lo, hi] per op, overriding OPS' defaults, e.g. {noise: [-0.05, 0.05]}.
    init_ranges: dict[str, list[float]] = field(default_factory=dict)


def _check(cfg: RangeAugmentConfig, channels: int, where: str) -> None:
    """One-line ConfigError (keys named under ``where``) for anything in ``cfg`` that cannot run on
    ``channels``-channel images."""
    if not cfg.ops:
        raise ConfigError(f"{where}.ops is empty: name at least one of {', '.join(OPS)}")
    for op in cfg.ops:
        if op not in OPS:
            raise ConfigError(f"{where}.ops: unknown op {op!r}; known: {', '.join(OPS)}")
        if OPS[op].colour and channels != 3:
            raise ConfigError(f"{where}.ops: {op!r} needs RGB images, but they have {channels} channel(s)")
    if len(set(cfg.ops)) != len(cfg.ops):
        raise ConfigError(f"{where}.ops names an op twice: {cfg.ops}")
    if not (math.isfinite(cfg.target_psnr) and 0.0 < cfg.target_psnr < PSNR_CAP):
        raise ConfigError(f"{where}.target_psnr must be in (0, {PSNR_CAP:g}) dB, got {cfg.target_psnr!r}")
    if not (math.isfinite(cfg.loss_weight) and cfg.loss_weight >= 0.0):
        raise ConfigError(f"{where}.loss_weight must be a finite number >= 0, got {cfg.loss_weight!r}")
    if not (0.0 < cfg.apply_prob <= 1.0):
        raise ConfigError(f"{where}.apply_prob must be in (0, 1], got {cfg.apply_prob!r}")
    if not (math.isfinite(cfg.lr_scale) and cfg.lr_scale > 0.0):
        raise ConfigError(f"{where}.lr_scale must be a finite number > 0, got {cfg.lr_scale!r}")
    for op, rng in cfg.init_ranges.items():
        if op not in cfg.ops:
            raise ConfigError(f"{where}.init_ranges: {op!r} is not in ops ({', '.join(cfg.ops)})")
        spec = OPS[op]
        ok = isinstance(rng, (list, tuple)) and len(rng) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in rng)
        if not ok or not (spec.lo_bounds[0] <= rng[0] <= spec.lo_bounds[1]
                          and spec.hi_bounds[0] <= rng[1] <= spec.hi_bounds[1]):
            raise ConfigError(f"{where}.init_ranges.{op} must be [lo, hi] with lo in {list(spec.lo_bounds)} and "
                              f"hi in {list(spec.hi_bounds)}, got {rng!r}")


def warp_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear warp with zero padding, equal to ``F.grid_sample(x, F.affine_grid(theta, x.shape,
    align_corners=False), align_corners=False)`` but built from gathers, whose CUDA backward is
    deterministic. x: (B, C, H, W); theta: (B, 2, 3) in normalised coordinates. Returns (B, C, H, W)."""
    b, c, h, w = x.shape
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)  # (B, H, W, 2)
    ix = ((grid[..., 0] + 1.0) * w - 1.0) / 2.0  # source pixel coordinates, (B, H, W)
    iy = ((grid[..., 1] + 1.0) * h - 1.0) / 2.0
    x0, y0 = ix.floor().detach(), iy.floor().detach()
    fx, fy = ix - x0, iy - y0  # the interpolation weights carry the gradient to theta
    flat = x.reshape(b, c, h * w)
    out = torch.zeros_like(x)
    for xc, wx in ((x0, 1.0 - fx), (x0 + 1.0, fx)):
        for yc, wy in ((y0, 1.0 - fy), (y0 + 1.0, fy)):
            inside = (xc >= 0) & (xc <= w - 1) & (yc >= 0) & (yc <= h - 1)
            index = (yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)).long().reshape(b, 1, h * w)
            values = flat.gather(2, index.expand(b, c, h * w)).reshape(b, c, h, w)
            out = out + values * (wx * wy * inside).unsqueeze(1)
    return out


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) ITU-R 601 luma."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


# YIQ (NTSC) <-> RGB, as python floats: per-sample matrices are built from scalars, so no constant
# tensor is copied to the device (a host sync) in the forward.
_RGB2YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
_YIQ2RGB = [list(map(float, row)) for row in torch.linalg.inv(torch.tensor(_RGB2YIQ, dtype=torch.float64))]


def _hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the (I, Q) chroma plane by ``turns`` (B,) full turns. x: (B, 3, H, W) -> (B, 3, H, W)."""
    cos, sin = torch.cos(2 * math.pi * turns), torch.sin(2 * math.pi * turns)
    yiq = [sum(_RGB2YIQ[i][j] * x[:, j] for j in range(3)) for i in range(3)]  # each (B, H, W)
    c, s = cos[:, None, None], sin[:, None, None]
    yiq = [yiq[0], c * yiq[1] - s * yiq[2], s * yiq[1] + c * yiq[2]]
    return torch.stack([sum(_YIQ2RGB[i][j] * yiq[j] for j in range(3)) for i in range(3)], dim=1)


def _sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """blur + m * (x - blur), blur PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 on inner pixels
    (the border ring stays as it is, as PIL and torchvision do). x: (B, C, H, W); m: (B, 1, 1, 1)."""
    h, w = x.shape[-2:]
    blur = (9.0 * F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True) + 4.0 * x) / 13.0
    rows = torch.arange(h, device=x.device).view(h, 1)
    cols = torch.arange(w, device=x.device).view(1, w)
    inner = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
    blur = torch.where(inner, blur, x)
    return blur + m * (x - blur)


class RangeAugment(nn.Module):
    """Learned-range augmentation for ``channels``-channel images (see the module docstring).

    Parameters: ``<op>_lo`` and ``<op>_hi`` per op, each of shape (1,) (DeepSpeed refuses 0-dim
    parameters; 1-d ones also escape weight decay under ``optim.no_decay_1d``).

    Keeping the ranges valid: the owner clamps each parameter into :meth:`bounds` after every
    optimizer step (the task's ``parameter_bounds``; :meth:`clamp_` here). Clamping the parameter,
    not a sigmoid-squashed copy (CoreNet's choice), keeps the gradient the same size everywhere up
    to the bound and the logged values readable as magnitudes. Because ``lo``'s interval ends below
    the op's identity and ``hi``'s begins above it, a clamped range always has ``lo < identity < hi``.
    The forward also reads the parameters through a straight-through clamp, so a parameter an
    optimizer has just pushed past its bound is used at the bound (its gradient is kept, so it can
    come back) even by an owner that never clamps.
    """

    def __init__(self, cfg: RangeAugmentConfig, channels: int, where: str = "range_augment") -> None:
        """``where``: the recipe key of ``cfg``, named in configuration errors."""
        super().__init__()
        _check(cfg, channels, where)
        self.cfg, self.channels = cfg, channels
        self.ops = list(cfg.ops)
        for op in self.ops:
            lo, hi = cfg.init_ranges.get(op, OPS[op].init)
            self.register_parameter(f"{op}_lo", nn.Parameter(torch.tensor([float(lo)])))
            self.register_parameter(f"{op}_hi", nn.Parameter(torch.tensor([float(hi)])))

    def bounds(self) -> dict[str, tuple[float, float]]:
        """{parameter name: (low, high)} that keeps every range valid (see the class docstring)."""
        out = {}
        for op in self.ops:
            out[f"{op}_lo"], out[f"{op}_hi"] = OPS[op].lo_bounds, OPS[op].hi_bounds
        return out

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp every range parameter into :meth:`bounds` (for owners without the trainer's clamp)."""
        params = dict(self.named_parameters())
        for name, (low, high) in self.bounds().items():
            params[name].clamp_(low, high)

    def ranges(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{op: (lo, hi)} as fp32 0-dim tensors, clamped straight-through (value at the bound, gradient
        as if unclamped)."""
        out = {}
        for op in self.ops:
            ends = []
            for end, (low, high) in (("lo", OPS[op].lo_bounds), ("hi", OPS[op].hi_bounds)):
                p = getattr(self, f"{op}_{end}").float().reshape(())
                ends.append(p.detach().clamp(low, high) + (p - p.detach()))  # exact value, gradient 1
            out[op] = (ends[0], ends[1])
        return out

    def _draw(self, op: str, lo: torch.Tensor, hi: torch.Tensor, shape: tuple[int, ...],
              device: torch.device) -> torch.Tensor:
        """Magnitudes of shape ``shape`` (leading dim B): ``lo + u * (hi - lo)`` where the op applies
        (probability ``apply_prob`` per sample), the identity elsewhere."""
        m = lo + torch.rand(shape, device=device) * (hi - lo)
        if self.cfg.apply_prob < 1.0:
            applied = torch.rand(shape[0], device=device) < self.cfg.apply_prob
            m = torch.where(applied.view(-1, *([1] * (len(shape) - 1))), m, OPS[op].identity)
        return m

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """images: (B, C, H, W) in [0, 1], any float dtype.

        Returns ``(augmented, loss, stats)``: augmented (B, C, H, W) in [0, 1] in the input's dtype;
        loss the fp32 0-dim auxiliary loss ``|RMSE / RMSE(target_psnr) - 1|`` (not yet multiplied by
        ``loss_weight``), RMSE over the whole batch; stats ``psnr`` (dB, of the whole batch against
        the input) and ``<op>_lo`` / ``<op>_hi``, all detached fp32 0-dim tensors. In eval mode the
        images come back unchanged and the loss is 0.
        """
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"RangeAugment expects (B, {self.channels}, H, W) images, got {tuple(images.shape)}")
        x = images.float()
        ranges = self.ranges()
        stats = {f"{op}_{end}": v.detach() for op, (lo, hi) in ranges.items() for end, v in (("lo", lo), ("hi", hi))}
        if not self.training:
            stats["psnr"] = x.new_full((), PSNR_CAP)
            return images, x.new_zeros(()), stats
        b, dev = x.shape[0], x.device
        out = x
        geo: dict[str, torch.Tensor] = {}
        for op in self.ops:
            lo, hi = ranges[op]
            if OPS[op].geometric:
                geo[op] = self._draw(op, lo, hi, (b, 2) if op == "translate" else (b,), dev)
                continue
            m = self._draw(op, lo, hi, (b, 1, 1, 1), dev)
            if op == "brightness":
                out = out * m
            elif op == "contrast":
                mean = out.mean(dim=(2, 3), keepdim=True)
                out = mean + m * (out - mean)
            elif op == "noise":
                out = out + m * torch.randn_like(out)
            elif op == "sharpness":
                out = _sharpness(out, m)
            elif op == "saturation":
                gray = _luma(out)
                out = gray + m * (out - gray)
            elif op == "hue":
                out = _hue(out, m.view(b))
        if geo:
            out = warp_affine(out, self._theta(geo, b, x.shape[2], x.shape[3], dev))
        out = out.clamp(0.0, 1.0)
        rmse = (out - x).square().mean().clamp_min(10.0 ** (-PSNR_CAP / 10.0)).sqrt()
        # |RMSE / target RMSE - 1|: zero exactly at the target PSNR (PSNR = -20 log10 RMSE for images
        # in [0, 1]). Not |PSNR - target| in dB: d PSNR / d range grows like 1 / magnitude as a range
        # narrows, and one such outsized gradient (an overshoot past the target) keeps Adam's momentum
        # pointing the wrong way for dozens of steps. RMSE grows about linearly with every op's
        # magnitude, so its gradient stays the same size at any width and (relative) at any target.
        loss = (rmse / 10.0 ** (-self.cfg.target_psnr / 20.0) - 1.0).abs()
        stats["psnr"] = (-20.0 * torch.log10(rmse)).detach()
        return out.to(images.dtype), loss, stats

    @staticmethod
    def _theta(geo: dict[str, torch.Tensor], b: int, h: int, w: int, dev: torch.device) -> torch.Tensor:
        """(B, 2, 3) normalised sampling matrices: an output pixel at offset d (pixels) from the centre
        reads the input at ``R(angle) d / zoom + shift * (W, H)``."""
        angle = geo.get("rotate", torch.zeros(b, device=dev))
        zoom = geo.get("scale", torch.ones(b, device=dev))
        shift = geo.get("translate", torch.zeros(b, 2, device=dev))
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # pixel offsets -> normalised coordinates: x_n = dx / (W / 2), y_n = dy / (H / 2)
        row0 = torch.stack([cos, -sin * (h / w), 2.0 * shift[:, 0]], dim=-1)
        row1 = torch.stack([sin * (w / h), cos, 2.0 * shift[:, 1]], dim=-1)
        return torch.stack([row0, row1], dim=1)
