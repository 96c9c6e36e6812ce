"""Per-sample decoding (in the data workers) and the collate that splits a batch into its CLIP rows
and its SAM rows.

A shard sample is a *CLIP sample* when it carries a CLIP target (stored ``clip_emb.npy`` or an
online CLIP teacher) and a *SAM sample* when it carries a SAM target (stored ``sam_masks.npy`` +
``sam_prompts.json``, an online SAM teacher plus a mask to draw prompts from, or a ground-truth
mask). Rehearsal mixes the two sets with ``data.train: "CLIP_SET::SAM_SET"`` and ``data.weights``;
each batch then holds a random share of each kind and the loss is computed per kind.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from corefm.data.decode import SkipSample

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


@dataclass
class SampleSpec:
    """What the transform produces; built by the task from its config and the model."""

    sam_size: int  # SAM input side (model img_size)
    mask_size: int  # SAM low-res mask side (4 x token grid)
    clip_size: int  # student's CLIP input side
    clip_source: str  # stored | online | none
    sam_source: str  # stored | online | gt | none
    embed_dim: int
    pixel_mean: list[float]
    pixel_std: list[float]
    prompts: int = 1  # K point prompts and K box prompts per SAM sample
    mask_key: str = "seg.png"
    label_key: str = "cls"
    box_jitter: float = 0.1
    teacher_size: int = 0  # online CLIP teacher's input side
    teacher_preprocess: Callable | None = field(default=None, repr=False)
    versions: dict[str, str] = field(default_factory=dict)  # expected stored teacher versions


def _image(sample: dict) -> Image.Image:
    for k in IMAGE_KEYS:
        if k in sample:
            return Image.open(io.BytesIO(sample[k])).convert("RGB")
    raise SkipSample(f"sample {sample.get('__key__')!r} has no image ({', '.join(IMAGE_KEYS)})")


def sam_input(image: Image.Image, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """SAM's preprocessing: longest side -> ``size`` (bilinear), normalise (0-255 mean/std), pad
    bottom/right with zeros -> (3, size, size)."""
    w, h = image.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    x = torch.from_numpy(np.asarray(image.resize((nw, nh), Image.BILINEAR), dtype=np.float32)).permute(2, 0, 1)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    out = torch.zeros(3, size, size)
    out[:, :nh, :nw] = x
    return out


def sam_mask(mask: Image.Image, size: int) -> torch.Tensor:
    """A 0/1 (or 0/255) mask image -> (size, size) float in SAM's geometry (nearest, padded)."""
    w, h = mask.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    m = torch.from_numpy((np.asarray(mask.convert("L").resize((nw, nh), Image.NEAREST)) > 0).astype(np.float32))
    out = torch.zeros(size, size)
    out[:nh, :nw] = m
    return out


def sample_prompts(mask: torch.Tensor, k: int, train: bool, jitter: float,
                   gen: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """K single-point prompts inside ``mask`` (H, W) and K boxes around it, pixel xy coordinates.
    Train: random foreground pixels and jittered boxes; eval: the most interior pixel, the tight box.
    -> points (K, 1, 2), boxes (K, 4)."""
    ys, xs = np.nonzero(mask.numpy() > 0)
    if len(xs) == 0:
        raise SkipSample("empty mask: no prompt can be drawn")
    if train:
        idx = gen.integers(0, len(xs), size=k)
        pts = np.stack([xs[idx], ys[idx]], -1).astype(np.float32) + 0.5
    else:
        import cv2

        # distance to the nearest background pixel (the image border counts as background)
        padded = np.pad((mask.numpy() > 0).astype(np.uint8), 1)
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
        y, x = np.unravel_index(int(dist.argmax()), dist.shape)
        pts = np.tile(np.array([[x + 0.5, y + 0.5]], dtype=np.float32), (k, 1))
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
    boxes = np.tile(box, (k, 1))
    if train and jitter > 0:
        wh = np.array([box[2] - box[0], box[3] - box[1]] * 2, dtype=np.float32)
        boxes = boxes + gen.normal(0, jitter, size=boxes.shape).astype(np.float32) * wh
        boxes = np.clip(boxes, 0, mask.shape[-1])
    return torch.from_numpy(pts)[:, None, :], torch.from_numpy(boxes)


def _resize_mask(m: torch.Tensor, size: int) -> torch.Tensor:
    if m.shape[-1] == size:
        return m
    return torch.nn.functional.interpolate(m[None, None], size=(size, size), mode="nearest")[0, 0]


class SampleTransform:
    """Raw shard sample -> {"is_clip", "is_sam", tensors of each kind present} (picklable)."""

    def __init__(self, spec: SampleSpec, train: bool):
        self.spec, self.train = spec, train

    def __call__(self, raw: dict) -> dict:
        s = self.spec
        image = _image(raw)
        meta = json.loads(raw["json"]) if "json" in raw else {}
        self._check_versions(meta, raw.get("__key__"))
        out: dict[str, Any] = {"is_clip": False, "is_sam": False}
        label = int(raw[s.label_key].decode().strip()) if s.label_key in raw else -1
        if s.clip_source == "stored" and "clip_emb.npy" in raw or s.clip_source == "online":
            out["is_clip"] = True
            out["clip_image"] = sam_input(image, s.clip_size, s.pixel_mean, s.pixel_std)
            out["clip_label"] = label
            if s.clip_source == "stored":
                out["clip_target"] = torch.from_numpy(np.load(io.BytesIO(raw["clip_emb.npy"])).astype(np.float32))
            else:
                out["clip_teacher_image"] = s.teacher_preprocess(image)
        gt = sam_mask(Image.open(io.BytesIO(raw[s.mask_key])), s.sam_size) if s.mask_key in raw else None
        if out["is_clip"]:  # ground truth for zero-shot semantic segmentation (eval)
            blank = torch.zeros(s.clip_size, s.clip_size)
            out["clip_mask"] = _resize_mask(gt, s.clip_size) if gt is not None else blank
            out["clip_has_mask"] = float(gt is not None)
        stored = s.sam_source == "stored" and "sam_masks.npy" in raw
        if stored or (s.sam_source in ("online", "gt") and gt is not None and gt.any()):
            out["is_sam"] = True
            out["sam_image"] = sam_input(image, s.sam_size, s.pixel_mean, s.pixel_std)
            if stored:
                prompts = json.loads(raw["sam_prompts.json"])
                if len(prompts["boxes"]) < s.prompts:
                    from corefm.data.errors import DataError

                    raise DataError(f"sample {raw.get('__key__')!r} stores {len(prompts['boxes'])} SAM prompts, "
                                    f"task.prompts is {s.prompts}: lower it or rerun teacher-outputs --prompts")
                out["sam_points"] = torch.tensor(prompts["points"], dtype=torch.float32)[: s.prompts]
                out["sam_boxes"] = torch.tensor(prompts["boxes"], dtype=torch.float32)[: s.prompts]
                masks = torch.from_numpy(np.load(io.BytesIO(raw["sam_masks.npy"])).astype(np.float32))
                k = len(prompts["boxes"])
                out["sam_target"] = torch.cat([masks[: s.prompts], masks[k: k + s.prompts]])
            else:
                gen = np.random.default_rng(None if self.train else 0)
                out["sam_points"], out["sam_boxes"] = sample_prompts(gt, s.prompts, self.train, s.box_jitter, gen)
                if s.sam_source == "gt":
                    out["sam_target"] = _resize_mask(gt, s.mask_size)[None].expand(2 * s.prompts, -1, -1).clone()
            out["sam_point_labels"] = torch.ones(out["sam_points"].shape[:2], dtype=torch.int64)
            out["sam_gt"] = _resize_mask(gt, s.mask_size) if gt is not None else torch.zeros(s.mask_size, s.mask_size)
            out["sam_has_gt"] = float(gt is not None)
        if not (out["is_clip"] or out["is_sam"]):
            raise SkipSample(f"sample {raw.get('__key__')!r} has neither a CLIP nor a SAM target")
        return out

    def _check_versions(self, meta: dict, key: Any) -> None:
        stored = (meta.get("teachers") or {})
        for kind, want in self.spec.versions.items():
            got = (stored.get(kind) or {}).get("version")
            if got is not None and got != want:
                from corefm.data.errors import DataError

                raise DataError(f"sample {key!r}: stored {kind} teacher outputs are from version {got}, "
                                f"the recipe's {kind} teacher is {want}; recompute them with "
                                "`corefm sam-clip teacher-outputs`")


class Collate:
    """Samples -> flat batch: ``clip_*`` rows of the CLIP samples, ``sam_*`` rows of the SAM samples
    (zero rows of the right shape when a kind is absent, so every rank runs the same graph)."""

    def __init__(self, spec: SampleSpec):
        s, k = spec, spec.prompts
        self.shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
            "clip_image": ((3, s.clip_size, s.clip_size), torch.float32), "clip_label": ((), torch.int64),
            "clip_mask": ((s.clip_size, s.clip_size), torch.float32), "clip_has_mask": ((), torch.float32),
            "sam_image": ((3, s.sam_size, s.sam_size), torch.float32), "sam_points": ((k, 1, 2), torch.float32),
            "sam_point_labels": ((k, 1), torch.int64), "sam_boxes": ((k, 4), torch.float32),
            "sam_gt": ((s.mask_size, s.mask_size), torch.float32), "sam_has_gt": ((), torch.float32)}
        if s.clip_source == "stored":
            self.shapes["clip_target"] = ((s.embed_dim,), torch.float32)
        if s.clip_source == "online":
            self.shapes["clip_teacher_image"] = ((3, s.teacher_size, s.teacher_size), torch.float32)
        if s.sam_source in ("stored", "gt"):
            self.shapes["sam_target"] = ((2 * k, s.mask_size, s.mask_size), torch.float32)

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        out = {}
        for key, (shape, dtype) in self.shapes.items():
            rows = [torch.as_tensor(x[key], dtype=dtype) for x in samples
                    if x["is_" + key.split("_")[0]] and key in x]
            out[key] = torch.stack(rows) if rows else torch.zeros((0, *shape), dtype=dtype)
        return out
