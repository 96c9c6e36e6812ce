"""The two teachers: any open_clip model (CLIP) and a segment_anything checkpoint (SAM).

Each has a ``version`` (sha256 prefix of its weight files) written next to stored teacher
outputs, so training can refuse shards computed by another teacher.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

from corefm.errors import CheckpointError, ConfigError
from projects.sam_clip.model import (SamClipConfig, batched_mask_logits, build_sam, check_keys, named_config,
                                     read_state_dict)

SAM_CONFIG_NAME = "sam_config.json"


def files_version(paths: Sequence[Path]) -> str:
    """sha256 over the files' bytes (in name order), first 16 hex digits."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


class ClipTeacher:
    """An open_clip model: a folder with ``open_clip_config.json`` (e.g. a corefm CLIP release),
    ``hf-hub:org/name``, or ``MODEL_NAME@CHECKPOINT_FILE`` (open_clip's name + a local weights file)."""

    def __init__(self, spec: str):
        import open_clip

        self.spec = spec
        path = Path(spec)
        if path.is_dir():
            if not (path / "open_clip_config.json").is_file():
                raise CheckpointError(f"CLIP teacher {path}: no open_clip_config.json (not an open_clip folder)")
            weights = [p for p in path.iterdir()
                       if p.name.startswith("open_clip_") and p.suffix in (".bin", ".safetensors", ".pt")]
            if not weights:
                raise CheckpointError(f"CLIP teacher {path}: no open_clip weights file")
            self.version = files_version(weights)
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}")
            self.tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        elif "@" in spec:
            name, _, ckpt = spec.partition("@")
            if not Path(ckpt).is_file():
                raise CheckpointError(f"CLIP teacher checkpoint not found: {ckpt}")
            self.version = files_version([Path(ckpt)])
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=ckpt)
            except RuntimeError as e:  # load_state_dict's key report
                raise CheckpointError(f"CLIP teacher {ckpt} does not fit open_clip model {name}: "
                                      + " ".join(str(e).split())[:400]) from None
            self.tokenizer = open_clip.get_tokenizer(name)
        elif spec.startswith("hf-hub:"):
            model, _, preprocess = open_clip.create_model_and_transforms(spec)
            self.tokenizer = open_clip.get_tokenizer(spec)
            self.version = spec
        else:
            raise ConfigError(f"CLIP teacher {spec!r}: give an open_clip folder, hf-hub:org/name or NAME@CHECKPOINT")
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess  # PIL image -> (3, S, S), the teacher's own resolution and mean/std
        self.embed_dim = int(self.encode_image(torch.zeros(1, 3, *self.image_size)).shape[-1])

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return tuple(size) if isinstance(size, (tuple, list)) else (size, size)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, S, S) -> L2-normalised embeddings (B, E)."""
        return self.model.encode_image(images, normalize=True)

    @torch.no_grad()
    def classifier(self, class_names: Sequence[str], templates: str | Sequence[str] = "simple") -> torch.Tensor:
        """(E, C) normalised zero-shot class embeddings (open_clip's builder, template-averaged)."""
        from open_clip import build_zero_shot_classifier

        from corefm.eval.zero_shot import templates as template_set

        return build_zero_shot_classifier(self.model, self.tokenizer, list(class_names), template_set(templates),
                                          num_classes_per_batch=10, device=next(self.model.parameters()).device)

    def info(self) -> dict:
        return {"source": self.spec, "version": self.version, "embed_dim": self.embed_dim}


def load_sam_config(checkpoint: Path, config: str = "") -> SamClipConfig:
    """The SAM architecture: ``config`` (a preset name or a JSON file) or ``sam_config.json`` beside
    the checkpoint; default ``vit_b`` (official ``sam_vit_b_01ec64.pth``)."""
    beside = checkpoint.parent / SAM_CONFIG_NAME
    source = config or (str(beside) if beside.is_file() else "vit_b")
    if source.endswith(".json"):
        if not Path(source).is_file():
            raise ConfigError(f"SAM config file not found: {source}")
        return SamClipConfig(**{k: v for k, v in json.loads(Path(source).read_text()).items()
                                if k in SamClipConfig.__dataclass_fields__})
    return named_config(source)


class SamTeacher:
    """segment_anything's ``Sam`` with a checkpoint loaded strictly (wrong architecture -> one line
    naming the mismatched keys)."""

    def __init__(self, checkpoint: str | Path, config: str = ""):
        path = Path(checkpoint)
        self.cfg = load_sam_config(path, config)
        self.sam = build_sam(self.cfg)
        state = read_state_dict(path)
        check_keys(self.sam.state_dict(), state, f"SAM teacher {path}")
        self.sam.load_state_dict(state)
        self.sam.eval().requires_grad_(False)
        self.version = files_version([path])
        self.spec = str(path)

    @property
    def mask_size(self) -> int:
        return 4 * self.cfg.img_size // self.cfg.patch_size

    @torch.no_grad()
    def predict(self, images: torch.Tensor, points: torch.Tensor, point_labels: torch.Tensor,
                boxes: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, S, S), per image K point prompts (B, K, P, 2)/(B, K, P) and K boxes
        (B, K, 4) -> low-res mask logits (B, 2K, 4h, 4w): K point masks then K box masks."""
        emb = self.sam.image_encoder(images)
        pe = self.sam.prompt_encoder
        b, k = boxes.shape[:2]
        out = []
        for prompt in ({"points": (points.flatten(0, 1), point_labels.flatten(0, 1)), "boxes": None},
                       {"points": None, "boxes": boxes.flatten(0, 1)}):
            sparse, dense = pe(masks=None, **prompt)
            logits = batched_mask_logits(self.sam.mask_decoder, emb, pe.get_dense_pe(), sparse, dense)
            out.append(logits.unflatten(0, (b, k)))
        return torch.cat(out, dim=1)

    def info(self) -> dict:
        return {"source": self.spec, "version": self.version, "config": asdict(self.cfg)}


def save_sam_checkpoint(state: dict[str, torch.Tensor], cfg: SamClipConfig, out: Path) -> Path:
    """Write ``out`` (.pth, segment_anything layout) and ``sam_config.json`` beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone().contiguous() for k, v in state.items()}, out)
    skip = ("sam_checkpoint", "init_checkpoint")
    sam_cfg = {k: v for k, v in asdict(cfg).items() if not k.startswith("clip_") and k not in skip}
    (out.parent / SAM_CONFIG_NAME).write_text(json.dumps(sam_cfg, indent=2))
    return out


# Process-wide cache: a task, its eval and the data tool load each teacher once.
_CACHE: dict = {}


def get_clip_teacher(spec: str) -> ClipTeacher:
    if ("clip", spec) not in _CACHE:
        _CACHE[("clip", spec)] = ClipTeacher(spec)
    return _CACHE[("clip", spec)]


def get_sam_teacher(path: str, config: str = "") -> SamTeacher:
    if ("sam", path, config) not in _CACHE:
        _CACHE[("sam", path, config)] = SamTeacher(path, config)
    return _CACHE[("sam", path, config)]
