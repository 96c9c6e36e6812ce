"""Offline experts from classic vision: Otsu foreground masks, Canny edges, Haar-cascade boxes,
and semi-global stereo matching where a sample holds a stereo pair.

They need no downloaded weights: Otsu is a histogram rule, Canny a filter, SGBM a matcher, and
the Haar cascades are trained models shipped inside ``opencv-python-headless<5``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from projects.clip_pseudo.data.experts.base import Expert, grey, relative_depth


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values: the t maximising between-class variance of {<= t, > t}."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)  # pixels <= t
    w1 = total - w0
    m0 = np.cumsum(hist * levels)
    mean_all = m0[-1] / total
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return int(np.argmax(between))


class OtsuForeground(Expert):
    """Foreground/background segmentation (seg.png: 0 background, 1 foreground) by Otsu's threshold.

    The side of the threshold that covers most of the image border is taken as background, so
    bright objects on black (Fashion-MNIST) and dark drawings on white (clip art) both work.
    """

    name, key = "otsu-seg", "seg.png"
    version = "1"

    def label(self, image: Image.Image) -> np.ndarray:
        g = grey(image)
        if g.max() == g.min():
            raise ValueError("flat image: no foreground to separate")
        mask = g > otsu_threshold(g)
        border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        if border.mean() > 0.5:
            mask = ~mask
        return mask.astype(np.uint8)


class CannyEdges(Expert):
    """Edge map (edges.png: 0 or 255) from OpenCV's Canny detector."""

    name, key = "canny", "edges.png"

    def __init__(self, low: int = 50, high: int = 150) -> None:
        import cv2

        if not 0 <= low < high:
            raise ValueError(f"canny thresholds must satisfy 0 <= low < high, got {low}, {high}")
        self.low, self.high = low, high
        self.version = f"opencv-{cv2.__version__}/canny-{low}-{high}"

    def label(self, image: Image.Image) -> np.ndarray:
        import cv2

        return cv2.Canny(grey(image), self.low, self.high)


class HaarBoxes(Expert):
    """Object boxes (boxes.json) from one of OpenCV's packaged Haar cascades (faces by default)."""

    name, key = "haar-face", "boxes.json"

    def __init__(self, cascade: str = "frontalface_default", min_size: int = 24) -> None:
        import os

        import cv2

        path = os.path.join(cv2.data.haarcascades, f"haarcascade_{cascade}.xml")
        if not os.path.isfile(path):
            known = sorted(f[len("haarcascade_"):-4] for f in os.listdir(cv2.data.haarcascades) if f.endswith(".xml"))
            raise ValueError(f"no Haar cascade {cascade!r} in OpenCV {cv2.__version__} (known: {', '.join(known)})")
        self.classifier = cv2.CascadeClassifier(path)
        self.cascade, self.min_size = cascade, min_size
        if cascade != "frontalface_default":
            self.name = f"haar-{cascade}"
        self.version = f"opencv-{cv2.__version__}/haarcascade_{cascade}"

    def __getstate__(self) -> dict:
        return {"cascade": self.cascade, "min_size": self.min_size}  # CascadeClassifier is not picklable

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def label(self, image: Image.Image) -> dict:
        g = grey(image)
        found = self.classifier.detectMultiScale(g, scaleFactor=1.1, minNeighbors=5,
                                                 minSize=(self.min_size, self.min_size))
        boxes = [[int(x), int(y), int(x + w), int(y + h)] for x, y, w, h in (found if len(found) else [])]
        return {"width": int(g.shape[1]), "height": int(g.shape[0]), "boxes": boxes,
                "labels": [self.cascade] * len(boxes)}


class StereoDepth(Expert):
    """depth.png from a rectified stereo pair: the sample's image is the left view, ``right.png``
    the right one; OpenCV's semi-global block matching gives disparity (inverse depth), pixels
    without a match stay 0 (no value)."""

    name, key, inputs = "stereo-depth", "depth.png", ("right.png",)

    def __init__(self, max_disparity: int = 64, block: int = 5) -> None:
        import cv2

        if max_disparity <= 0 or max_disparity % 16 or block % 2 == 0:
            raise ValueError("stereo-depth needs max_disparity a positive multiple of 16 and an odd block size")
        self.max_disparity, self.block = max_disparity, block
        self.version = f"opencv-{cv2.__version__}/sgbm-3way-d{max_disparity}-b{block}"

    def label(self, image: Image.Image, right: Image.Image) -> np.ndarray:
        import cv2

        if image.size != right.size:
            raise ValueError(f"stereo views differ in size: {image.size} vs {right.size}")
        b = self.block
        matcher = cv2.StereoSGBM_create(minDisparity=0, numDisparities=self.max_disparity, blockSize=b,
                                        P1=8 * b * b, P2=32 * b * b, uniquenessRatio=10, speckleWindowSize=100,
                                        speckleRange=2, disp12MaxDiff=1, mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)
        disparity = matcher.compute(grey(image), grey(right)).astype(np.float64) / 16.0  # fixed point, 4 bits
        return relative_depth(disparity, disparity > 0)
