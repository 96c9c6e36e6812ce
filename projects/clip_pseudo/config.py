"""CLIP model config, and its two-way mapping to open_clip's ``model_cfg`` dicts.

Field meanings follow open_clip's ``CLIPVisionCfg`` / ``CLIPTextCfg`` (``vision_head_width`` is
open_clip's ``head_width``: vision heads = width / head_width), so any plain-ViT open_clip
config (ViT-S-16, ViT-M-16, ViT-B-32, ViT-B-16, ViT-L-14, ...) maps to one ClipConfig and back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from collections.abc import Iterator, Mapping
from typing import Any

from corefm.errors import ConfigError
from corefm.nn.mobilevit import TOWERS as MOBILEVIT_TOWERS

# Keys of an open_clip model_cfg that this model reproduces; anything else (timm or HF towers,
# custom attention blocks, attentional pooling, ...) is refused rather than silently dropped.
_VISION_KEYS = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}
_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
_TOP_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "init_logit_bias"}
MOBILEVIT_PREFIX = "mobilevit_"
# model.vision_tower values: the ViT, or one of corefm's MobileViT towers
VISION_TOWERS = ("vit", *(MOBILEVIT_PREFIX + name for name in MOBILEVIT_TOWERS))


@dataclass
class ClipConfig:
    """A two-tower CLIP. Defaults are open_clip's ViT-B-16."""

    embed_dim: int = 512
    # image tower
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_head_width: int = 64
    vision_mlp_ratio: float = 4.0
    # text tower (open_clip's BPE tokenizer: 49,408 tokens)
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    text_mlp_ratio: float = 4.0
    # x * sigmoid(1.702 x), as OpenAI's weights were trained with
    quick_gelu: bool = False
    init_logit_scale: float = math.log(1 / 0.07)
    # SigLIP models carry a learned logit bias (open_clip's init_logit_bias, -10 in SigLIP);
    # None means a plain CLIP without one.
    init_logit_bias: float | None = None
    # open_clip checkpoint (file or local-dir folder) to initialise both towers from; "" = random.
    pretrained: str = ""
    gradient_checkpointing: bool = False
    # Image tower: "vit" (the image_size / patch_size / vision_* fields above), or a corefm MobileViT
    # tower by name, "mobilevit_" + v1_xxs | v1_xs | v1_s | v2_050 ... v2_200 (corefm.nn.mobilevit),
    # projected linearly to embed_dim; it reads image_size only. A MobileViT tower takes no
    # pseudo-label dense heads and has no open_clip export: both refuse it with a ConfigError.
    vision_tower: str = "vit"

    def __post_init__(self) -> None:
        if self.vision_tower != "vit":
            if self.vision_tower not in VISION_TOWERS:
                raise ConfigError(f"model.vision_tower: unknown image tower {self.vision_tower!r} "
                                  f"(valid: {', '.join(VISION_TOWERS)})")
            if self.pretrained:
                raise ConfigError(f"model.pretrained loads open_clip ViT checkpoints; model.vision_tower is "
                                  f"{self.vision_tower!r} (train it from scratch, or use vision_tower: vit)")
            return  # the ViT's shape checks below do not apply
        if self.vision_width % self.vision_head_width:
            raise ConfigError(f"model.vision_width ({self.vision_width}) is not a multiple of "
                              f"model.vision_head_width ({self.vision_head_width})")
        if self.text_width % self.text_heads:
            raise ConfigError(f"model.text_width ({self.text_width}) is not a multiple of "
                              f"model.text_heads ({self.text_heads})")
        if self.image_size % self.patch_size:
            raise ConfigError(f"model.image_size ({self.image_size}) is not a multiple of "
                              f"model.patch_size ({self.patch_size})")

    @property
    def vision_heads(self) -> int:
        return self.vision_width // self.vision_head_width

    @property
    def mobilevit_name(self) -> str | None:
        """The corefm MobileViT tower name (``v2_100``, ...) for a MobileViT image tower, else None."""
        return self.vision_tower.removeprefix(MOBILEVIT_PREFIX) if self.vision_tower != "vit" else None


def require_vit_tower(cfg: ClipConfig, what: str) -> None:
    """One-line ConfigError unless ``cfg`` has the ViT image tower: ``what`` (open_clip export,
    dense heads, ...) exists for the ViT's layout only, and silently skipping it would hide that."""
    if cfg.vision_tower != "vit":
        raise ConfigError(f"{what} needs the ViT image tower (model.vision_tower: vit); this CLIP's "
                          f"image tower is {cfg.vision_tower!r}")


def to_open_clip_cfg(cfg: ClipConfig) -> dict[str, Any]:
    """The open_clip ``model_cfg`` that builds the same architecture (``open_clip.CLIP(**cfg)``)."""
    require_vit_tower(cfg, "open_clip export")
    out: dict[str, Any] = {
        "embed_dim": cfg.embed_dim,
        "quick_gelu": cfg.quick_gelu,
        "vision_cfg": {"image_size": cfg.image_size, "layers": cfg.vision_layers, "width": cfg.vision_width,
                       "patch_size": cfg.patch_size, "head_width": cfg.vision_head_width,
                       "mlp_ratio": cfg.vision_mlp_ratio},
        "text_cfg": {"context_length": cfg.context_length, "vocab_size": cfg.vocab_size, "width": cfg.text_width,
                     "heads": cfg.text_heads, "layers": cfg.text_layers, "mlp_ratio": cfg.text_mlp_ratio},
    }
    if cfg.init_logit_bias is not None:
        # open_clip creates the logit_bias parameter only when this key is present
        out["init_logit_bias"] = cfg.init_logit_bias
    if not math.isclose(cfg.init_logit_scale, math.log(1 / 0.07)):
        out["init_logit_scale"] = cfg.init_logit_scale
    return out


def from_open_clip_cfg(model_cfg: dict[str, Any], **overrides: Any) -> ClipConfig:
    """ClipConfig from an open_clip ``model_cfg`` (a built-in config or ``open_clip_config.json``)."""
    model_cfg = model_cfg.get("model_cfg", model_cfg)
    vision, text = dict(model_cfg.get("vision_cfg", {})), dict(model_cfg.get("text_cfg", {}))
    extra = (set(model_cfg) - _TOP_KEYS) | {f"vision_cfg.{k}" for k in set(vision) - _VISION_KEYS} \
        | {f"text_cfg.{k}" for k in set(text) - _TEXT_KEYS}
    if extra:
        raise ConfigError(f"open_clip config uses {', '.join(sorted(extra))}, which this CLIP does not "
                          "implement (only plain ViT + causal text towers)")
    if isinstance(vision.get("layers", 12), (list, tuple)):
        raise ConfigError("open_clip config describes a ResNet image tower; only ViT towers are supported")
    image_size = vision.get("image_size", 224)
    if isinstance(image_size, (list, tuple)):
        if image_size[0] != image_size[1]:
            raise ConfigError(f"only square images are supported, got image_size {image_size}")
        image_size = image_size[0]
    values = dict(
        embed_dim=model_cfg["embed_dim"], quick_gelu=bool(model_cfg.get("quick_gelu", False)),
        image_size=int(image_size), patch_size=vision.get("patch_size", 16), vision_width=vision.get("width", 768),
        vision_layers=vision.get("layers", 12), vision_head_width=vision.get("head_width", 64),
        vision_mlp_ratio=float(vision.get("mlp_ratio", 4.0)),
        context_length=text.get("context_length", 77), vocab_size=text.get("vocab_size", 49408),
        text_width=text.get("width", 512), text_heads=text.get("heads", 8), text_layers=text.get("layers", 12),
        text_mlp_ratio=float(text.get("mlp_ratio", 4.0)),
        init_logit_bias=model_cfg.get("init_logit_bias"),
    )
    if "init_logit_scale" in model_cfg:
        values["init_logit_scale"] = float(model_cfg["init_logit_scale"])
    values.update(overrides)
    return ClipConfig(**values)


# Small sizes for CPU runs and tests (open_clip has no config this small; the shapes are still
# plain open_clip ViT/text shapes, so the export loads there).
TINY = {
    "tiny": dict(embed_dim=64, image_size=28, patch_size=4, vision_width=96, vision_layers=3,
                 vision_head_width=32, context_length=24, text_width=64, text_heads=2, text_layers=2),
    "micro": dict(embed_dim=32, image_size=32, patch_size=8, vision_width=64, vision_layers=2,
                  vision_head_width=32, context_length=16, text_width=32, text_heads=2, text_layers=2),
}


class ClipPresets(Mapping):
    """Recipe presets (``model: {name: clip, preset: ViT-B-16}``): ``tiny``, ``micro`` and every
    open_clip built-in config name, read from open_clip when a recipe names it. A known name whose
    towers this CLIP does not implement (ResNet, timm, ...) is a one-line error, not "unknown"."""

    def __getitem__(self, name: str) -> dict[str, Any]:
        if name in TINY:
            return dict(TINY[name])
        from open_clip import get_model_config

        model_cfg = get_model_config(name)
        if model_cfg is None:
            raise KeyError(name)
        return config_dict(from_open_clip_cfg(model_cfg))

    def __iter__(self) -> Iterator[str]:
        from open_clip import list_models

        return iter([*TINY, *list_models()])

    def __len__(self) -> int:
        return sum(1 for _ in self)


def config_dict(cfg: ClipConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


def named_config(name: str, **overrides: Any) -> ClipConfig:
    """``tiny`` / ``micro`` or any open_clip built-in plain-ViT config name (e.g. ``ViT-B-16``): the
    recipe preset of that name (:class:`ClipPresets`) with field overrides."""
    try:
        preset = ClipPresets()[name]
    except KeyError:
        raise ConfigError(f"unknown CLIP size {name!r}: use {', '.join(TINY)} or an open_clip config name "
                          "such as ViT-B-16") from None
    return ClipConfig(**{**preset, **overrides})
