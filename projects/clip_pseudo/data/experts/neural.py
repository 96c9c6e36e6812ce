"""Offline neural experts: pretrained networks whose weights ship inside an installed package.

``mtcnn-face``: MTCNN (Zhang et al., 2016), the three-stage cascade of small CNNs (P-, R- and
O-Net) in ``facenet-pytorch`` 2.6.0, whose wheel carries the trained weights. It writes face boxes
with their scores to ``boxes.json``. (``launch/setup.sh`` installs facenet-pytorch without its
dependency pins, which ask for torch 2.2: it runs on corefm's torch.)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from projects.clip_pseudo.data.experts.base import Expert


class MTCNNFaces(Expert):
    """Face boxes (boxes.json, label "face", score) from facenet-pytorch's pretrained MTCNN; small
    images are scaled up to ``min_side`` first (MTCNN looks for faces of 20 px and more)."""

    name, key = "mtcnn-face", "boxes.json"

    def __init__(self, threshold: float = 0.9, min_side: int = 100) -> None:
        from importlib.metadata import version

        from facenet_pytorch import MTCNN

        self.threshold, self.min_side = threshold, min_side
        self.mtcnn = MTCNN(keep_all=True, device="cpu")
        # the package's version names its weights (they ship in the wheel); and the threshold
        self.version = f"facenet-pytorch-{version('facenet-pytorch')}/mtcnn-{threshold}"

    def __getstate__(self) -> dict:
        return {"threshold": self.threshold, "min_side": self.min_side}  # each worker loads its own nets

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def label(self, image: Image.Image) -> dict:
        rgb = image.convert("RGB")
        w, h = rgb.size
        scale = max(1.0, self.min_side / min(w, h))
        if scale > 1:
            rgb = rgb.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
        found, scores = self.mtcnn.detect(rgb)
        keep = [] if found is None else [i for i, s in enumerate(scores) if s >= self.threshold]
        boxes = [[float(np.clip(v / scale, 0, lim)) for v, lim in zip(np.asarray(found[i], dtype=float), (w, h, w, h))]
                 for i in keep]
        return {"width": w, "height": h, "boxes": boxes, "labels": ["face"] * len(boxes),
                "scores": [round(float(scores[i]), 4) for i in keep]}
