"""``corefm sam-clip teacher-outputs``: store SAM-CLIP teacher outputs in shards (dataset reinforcement).

Copies every sample of the input shard set and adds, per teacher asked for:

- CLIP: ``clip_emb.npy`` (E,) float32, the open_clip teacher's L2-normalised image embedding of the
  image under the teacher's own preprocessing;
- SAM: ``sam_prompts.json`` ({"points": [[[x, y]]] x K, "boxes": [[x0, y0, x1, y1]] x K}, pixels of
  the SAM input) drawn from the sample's mask (``--mask-key``, e.g. Otsu's ``seg.png``) and
  ``sam_masks.npy`` (2K, m, m) uint8: the teacher's masks for the K point prompts, then the K boxes.

Provenance: ``json.teachers.{clip,sam} = {source, version}`` in every sample and in the
``dataset.json`` producer; training compares these versions with its recipe's teachers.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from corefm.data import load_manifest
from corefm.data.shards import iter_shard
from corefm.data.writer import ShardWriter
from corefm.errors import ConfigError

PRODUCER = "projects.sam_clip.teacher_outputs"


def _shard_range(spec: str, n: int) -> range:
    if not spec:
        return range(n)
    a, _, b = spec.partition(":")
    try:
        return range(int(a or 0), min(n, int(b) if b else n))
    except ValueError:
        raise ConfigError(f"--shards {spec!r}: expected START:END shard indices, e.g. 0:12") from None


def run(in_dir: Path, out_dir: Path, clip: str = "", sam: str = "", sam_config: str = "", prompts: int = 1,
        mask_key: str = "seg.png", shards: str = "", batch_size: int = 64, seed: int = 0,
        samples_per_shard: int = 0) -> dict[str, Any]:
    """Write ``out_dir`` (shards named after the input split + dataset.json); returns a summary.

    ``samples_per_shard`` (default: as the input) should be small enough that the training
    loader's shuffle buffer spans several shards: rehearsal mixes two sets shard by shard, so
    shards larger than the buffer give batches of one kind for long stretches.
    """
    from projects.sam_clip.data import _image, sam_input, sam_mask, sample_prompts
    from projects.sam_clip.teachers import ClipTeacher, SamTeacher

    if not clip and not sam:
        raise ConfigError("teacher-outputs needs --clip and/or --sam")
    manifest = load_manifest(in_dir)
    selected = [manifest.shards[i] for i in _shard_range(shards, len(manifest.shards))]
    if not selected:
        raise ConfigError(f"--shards {shards!r} selects no shard of {in_dir} ({len(manifest.shards)} shards)")
    clip_t = ClipTeacher(clip) if clip else None
    sam_t = SamTeacher(sam, sam_config) if sam else None
    teachers = {k: {"source": t.spec, "version": t.version, **({"embed_dim": t.embed_dim} if k == "clip" else
                                                               {"img_size": t.cfg.img_size})}
                for k, t in (("clip", clip_t), ("sam", sam_t)) if t is not None}
    producer = {"name": PRODUCER, "version": "1", "input": str(in_dir), "teachers": teachers, "prompts": prompts,
                **{k: v for k, v in manifest.producer.items() if k == "classes"}}
    prefix = selected[0].name.rsplit("-", 1)[0]
    counts = {"samples": 0, "clip": 0, "sam": 0, "no_mask": 0}
    pending: list[dict] = []

    def flush(writer: ShardWriter) -> None:
        if clip_t is not None:
            images = torch.stack([clip_t.preprocess(s["_image"]) for s in pending])
            for s, e in zip(pending, clip_t.encode_image(images).float().numpy()):
                s["clip_emb.npy"] = e.astype(np.float32)
            counts["clip"] += len(pending)
        with_mask = [s for s in pending if "_prompts" in s]
        if sam_t is not None and with_mask:
            size = sam_t.cfg.img_size
            mean, std = sam_t.cfg.pixel_mean, sam_t.cfg.pixel_std
            images = torch.stack([sam_input(s["_image"], size, mean, std) for s in with_mask])
            pts = torch.stack([s["_prompts"][0] for s in with_mask])
            boxes = torch.stack([s["_prompts"][1] for s in with_mask])
            masks = sam_t.predict(images, pts, torch.ones(pts.shape[:3], dtype=torch.int64), boxes) > 0
            for s, m, p, b in zip(with_mask, masks, pts, boxes):
                s["sam_masks.npy"] = m.numpy().astype(np.uint8)
                s["sam_prompts.json"] = {"points": p.tolist(), "boxes": b.tolist()}
            counts["sam"] += len(with_mask)
        for s in pending:
            writer.write({k: v for k, v in s.items() if k not in ("_image", "_prompts")})
        counts["samples"] += len(pending)
        pending.clear()

    per_shard = samples_per_shard or max(s.samples for s in selected)
    with ShardWriter(out_dir, prefix=prefix, max_samples_per_shard=per_shard, producer=producer) as writer:
        for info in tqdm(selected, unit="shard", desc="teacher outputs"):
            for raw in iter_shard(str(Path(manifest.dir) / info.name), info.samples):
                sample: dict[str, Any] = {k: v for k, v in raw.items() if k != "__url__"}
                meta = json.loads(raw["json"]) if "json" in raw else {}
                meta["teachers"] = teachers
                sample["json"] = meta
                sample["_image"] = _image(raw)
                if sam_t is not None:
                    if mask_key in raw:
                        mask = sam_mask(Image.open(io.BytesIO(raw[mask_key])), sam_t.cfg.img_size)
                        if mask.any():
                            # per-sample seed from the key: reruns give the same prompts
                            digest = hashlib.sha1(f"{seed}/{raw['__key__']}".encode()).hexdigest()
                            gen = np.random.default_rng(int(digest[:8], 16))
                            sample["_prompts"] = sample_prompts(mask, prompts, True, 0.1, gen)
                    if "_prompts" not in sample:
                        counts["no_mask"] += 1
                pending.append(sample)
                if len(pending) >= batch_size:
                    flush(writer)
        if pending:
            flush(writer)
    return {**counts, "out": str(out_dir), "teachers": teachers}
