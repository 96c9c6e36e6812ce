"""Pseudo-label experts by name: ``build_experts("otsu-seg,canny,hf-depth:/models/dpt")``.

Spec syntax, comma-separated: ``NAME`` or ``NAME:ARG``.

| name | writes | needs |
|---|---|---|
| ``otsu-seg`` | ``seg.png`` foreground mask | nothing |
| ``canny[:LOW-HIGH]`` | ``edges.png`` | opencv-python-headless<5 |
| ``haar-face`` / ``haar:CASCADE`` | ``boxes.json`` | opencv-python-headless<5 (ships the cascades) |
| ``mtcnn-face[:THRESHOLD]`` | ``boxes.json`` face boxes + scores | facenet-pytorch (ships MTCNN's weights; setup.sh) |
| ``stereo-depth[:MAXDISP]`` | ``depth.png`` from the image + ``right.png`` | opencv-python-headless<5 |
| ``hf-seg:PATH_OR_ID`` | ``seg.png`` class map | transformers + a local model folder or the Hub |
| ``hf-depth:PATH_OR_ID`` | ``depth.png`` relative depth | transformers + a local model folder or the Hub |
| ``hf-det:PATH_OR_ID`` | ``boxes.json`` (score >= 0.5) | transformers + a local model folder or the Hub |
| ``import:PKG.MODULE.CLASS`` | the class's ``key`` | your own :class:`Expert` subclass |
"""

from __future__ import annotations

import importlib
from typing import Callable

from corefm.data import DataError
from projects.clip_pseudo.data.experts.base import Expert, encode_label

__all__ = ["EXPERTS", "Expert", "build_expert", "build_experts", "encode_label", "split_specs"]


def _canny(arg: str) -> Expert:
    from projects.clip_pseudo.data.experts.classic import CannyEdges

    if not arg:
        return CannyEdges()
    try:
        low, high = (int(v) for v in arg.split("-"))
    except ValueError:
        raise DataError(f"canny:{arg}: expected canny:LOW-HIGH, e.g. canny:50-150") from None
    return CannyEdges(low, high)


def _otsu(arg: str) -> Expert:
    from projects.clip_pseudo.data.experts.classic import OtsuForeground

    return OtsuForeground()


def _haar(arg: str) -> Expert:
    from projects.clip_pseudo.data.experts.classic import HaarBoxes

    return HaarBoxes(arg or "frontalface_default")


def _mtcnn(arg: str) -> Expert:
    from projects.clip_pseudo.data.experts.neural import MTCNNFaces

    try:
        return MTCNNFaces(float(arg)) if arg else MTCNNFaces()
    except ValueError:
        raise DataError(f"mtcnn-face:{arg}: expected a score threshold, e.g. mtcnn-face:0.9") from None


def _stereo(arg: str) -> Expert:
    from projects.clip_pseudo.data.experts.classic import StereoDepth

    try:
        return StereoDepth(int(arg)) if arg else StereoDepth()
    except ValueError as e:
        raise DataError(f"stereo-depth:{arg}: {e}") from None


def _hf_seg(arg: str) -> Expert:
    from projects.clip_pseudo.data.experts.hf_pipeline import HFSegmentation

    return HFSegmentation(arg)


def _hf_depth(arg: str) -> Expert:
    from projects.clip_pseudo.data.experts.hf_pipeline import HFDepth

    return HFDepth(arg)


def _hf_det(arg: str) -> Expert:
    from projects.clip_pseudo.data.experts.hf_pipeline import HFDetection

    return HFDetection(arg)


def _import(arg: str) -> Expert:
    module, _, cls = arg.rpartition(".")
    try:
        expert = getattr(importlib.import_module(module), cls)()
    except (ImportError, AttributeError, ValueError, TypeError) as e:  # TypeError: label() not implemented
        raise DataError(f"import:{arg}: cannot load the expert class ({type(e).__name__}: {e})") from None
    if not isinstance(expert, Expert):
        raise DataError(f"import:{arg} is not a projects.clip_pseudo.data.experts.Expert")
    return expert


EXPERTS: dict[str, Callable[[str], Expert]] = {
    "otsu-seg": _otsu, "canny": _canny, "haar-face": _haar, "haar": _haar, "mtcnn-face": _mtcnn,
    "stereo-depth": _stereo, "hf-seg": _hf_seg, "hf-depth": _hf_depth, "hf-det": _hf_det, "import": _import,
}


def split_specs(text: str) -> list[str]:
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise DataError("no experts given (e.g. --experts otsu-seg,canny)")
    return specs


def build_expert(spec: str) -> Expert:
    name, _, arg = spec.partition(":")
    if name not in EXPERTS:
        raise DataError(f"unknown expert {name!r} (known: {', '.join(sorted(EXPERTS))})")
    try:
        expert = EXPERTS[name](arg)
    except ImportError as e:
        raise DataError(f"expert {name} needs a package that is not installed: {e.name or e}") from None
    except ValueError as e:
        raise DataError(f"expert {spec}: {e}") from None
    if not (expert.name and expert.version and expert.key):
        raise DataError(f"expert {spec} must define name, version and key")
    return expert


def build_experts(specs: str | list[str]) -> list[Expert]:
    """Experts for a comma-separated spec string (or list); two experts writing one key is an error."""
    experts = [build_expert(s) for s in (split_specs(specs) if isinstance(specs, str) else specs)]
    seen: dict[str, str] = {}
    for e in experts:
        if e.key in seen:
            raise DataError(f"experts {seen[e.key]} and {e.name} both write {e.key}")
        if e.name in seen.values():
            raise DataError(f"expert {e.name} is listed twice")
        seen[e.key] = e.name
    return experts
