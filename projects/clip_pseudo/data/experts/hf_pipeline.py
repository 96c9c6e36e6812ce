"""Model-zoo experts through ``transformers`` pipelines, from a local folder or a Hub id.

``hf-seg:PATH_OR_ID`` runs an ``image-segmentation`` pipeline (e.g. SegFormer, Mask2Former) and
writes ``seg.png``: each pixel the index (``config.label2id``) of the mask covering it, 255 where
none does (uint16 PNG with 65535 as "none" when the model has more than 255 classes).
``hf-depth:PATH_OR_ID`` runs a ``depth-estimation`` pipeline (DPT, GLPN, Depth Anything) and
writes ``depth.png``: the model's prediction at the image's size in the shared depth.png
convention (:mod:`projects.clip_pseudo.data.experts.base`; DPT-style models predict relative inverse depth).
``hf-det:PATH_OR_ID`` runs an ``object-detection`` pipeline (DETR, YOLOS, ...) and writes
``boxes.json`` with the boxes scoring at least 0.5, their labels and scores.

The version is ``transformers-<ver>/<model>@<hash>``: a hash of a local folder's config and
weights, or the Hub commit the files came from, so the shards record exactly which weights
labelled them. The model loads lazily on first use, in the worker process that uses it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from projects.clip_pseudo.data.experts.base import Expert, relative_depth


def folder_hash(path: Path) -> str:
    """sha256 (first 12 hex) of a model folder's config and weight files, in name order."""
    digest = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".model", ".txt"):
            digest.update(f.name.encode())
            with open(f, "rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()[:12]


class HFPipelineExpert(Expert):
    pipeline_task = ""

    def __init__(self, model: str, device: str = "cpu") -> None:
        import transformers

        if not model:
            raise ValueError(f"{self.name} needs a model: {self.name}:/path/to/folder or {self.name}:org/name")
        self.model, self.device = model, device
        local = Path(model)
        if local.is_dir():
            if not (local / "config.json").is_file():
                raise ValueError(f"{model} has no config.json: not a transformers model folder")
            ref = folder_hash(local)
        else:
            from huggingface_hub import model_info

            try:  # the commit the Hub would serve now; offline this fails, and so would loading
                ref = (model_info(model).sha or "")[:12]
            except Exception as e:  # noqa: BLE001 - any Hub failure: report it as one line
                raise ValueError(f"{model} is neither a local folder nor reachable on the Hub ({type(e).__name__})")
        self.version = f"transformers-{transformers.__version__}/{local.name if local.is_dir() else model}@{ref}"
        self._pipe = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pipe": None}  # each worker loads its own copy

    @property
    def pipe(self):
        if self._pipe is None:
            import transformers
            from transformers import pipeline

            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
            self._pipe = pipeline(self.pipeline_task, model=self.model, device=self.device)
        return self._pipe


class HFSegmentation(HFPipelineExpert):
    name, key, pipeline_task = "hf-seg", "seg.png", "image-segmentation"

    def label(self, image: Image.Image) -> np.ndarray:
        image = image.convert("RGB")
        results = self.pipe(image)
        label2id = {str(k): int(v) for k, v in (self.pipe.model.config.label2id or {}).items()}
        wide = max(label2id.values(), default=0) >= 255
        none = 65535 if wide else 255
        out = np.full((image.height, image.width), none, dtype=np.uint16 if wide else np.uint8)
        # Pipelines list masks best first for instance/panoptic models; paint worst first so
        # the best mask wins where they overlap.
        for item in reversed(results):
            if item["label"] not in label2id:
                raise ValueError(f"pipeline label {item['label']!r} is not in the model's label2id")
            mask = np.asarray(item["mask"].convert("L").resize(image.size, Image.NEAREST)) > 127
            out[mask] = label2id[item["label"]]
        return out


class HFDepth(HFPipelineExpert):
    name, key, pipeline_task = "hf-depth", "depth.png", "depth-estimation"

    def label(self, image: Image.Image) -> np.ndarray:
        import torch

        image = image.convert("RGB")
        pred: Any = self.pipe(image)["predicted_depth"]
        depth = torch.as_tensor(pred, dtype=torch.float32).squeeze()
        if depth.ndim != 2:
            raise ValueError(f"depth pipeline returned shape {tuple(depth.shape)}, expected (H, W)")
        if tuple(depth.shape) != (image.height, image.width):
            depth = torch.nn.functional.interpolate(depth[None, None], size=(image.height, image.width),
                                                    mode="bilinear", align_corners=False)[0, 0]
        if not torch.isfinite(depth).all():
            raise ValueError("depth prediction has non-finite values")
        return relative_depth(depth.numpy().astype(np.float64))


class HFDetection(HFPipelineExpert):
    name, key, pipeline_task = "hf-det", "boxes.json", "object-detection"
    threshold = 0.5

    def label(self, image: Image.Image) -> dict:
        image = image.convert("RGB")
        found = self.pipe(image, threshold=self.threshold)
        return {"width": image.width, "height": image.height,
                "boxes": [[d["box"]["xmin"], d["box"]["ymin"], d["box"]["xmax"], d["box"]["ymax"]] for d in found],
                "labels": [d["label"] for d in found], "scores": [round(float(d["score"]), 4) for d in found]}
