"""Dataset reinforcement (Faghri et al., arXiv 2303.08983): a teacher's top-k logits under N recorded
augmentations of every image, stored beside the sample.

    corefm data reinforce --in data/fashion/train --out data/fashion-rf/train --teacher runs/big --augs 4 --topk 5

Input shard ``X.tar`` becomes output shard ``X.tar`` with every input member kept and one more,
``reinforce.json``: ``{"augs": [N x {"box": [top, left, h, w], "flip": 0|1, "digest": view digest}],
"index": N x k class indices, "logits": N x k teacher logits}``, best first, the logits rounded to
float16 (written exactly: a float16 value is a short decimal). One member keeps the tar overhead at
one header per sample. A student then trains on one stored view per visit, replayed exactly
(:mod:`corefm.augment.replay`), against the teacher's logits.

* Augmentations are drawn from ``random.Random(f"{seed}/{key}")``: the same sample gets the same
  views in every run, so a rerun and a resumed run write identical shards.
* Resumable like the pseudo-label tool: ``OUT/.reinforce/X.json`` records a finished shard
  (input checksum, settings, output size); a rerun skips shards whose record and output match.
* The manifest records the version, teacher, N, k, augmentation ranges and seed
  (``producer``), and keeps the input's ``classes``.
* Teachers (:mod:`corefm.eval.teachers`): a corefm classification run folder, or an open_clip
  folder as a zero-shot classifier over the class names.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from corefm.augment.replay import AugmentSpec, apply, draw, to_tensor, view_digest
from corefm.data.decode import IMAGE_EXTENSIONS, decode_image
from corefm.data.errors import DataError
from corefm.data.manifest import ShardInfo, load_manifest, write_manifest
from corefm.data.shards import READ_ERRORS, iter_shard
from corefm.data.writer import ShardWriter
from corefm.eval.teachers import Teacher

PRODUCER = "corefm.data.reinforce"
VERSION = "1"
STATE_DIR = ".reinforce"
KEYS = ("reinforce.json",)


def find_image(raw: dict[str, Any]):
    """The sample's image, decoded (PIL); ValueError if there is none or it does not decode."""
    ext = next((k for k in raw if k in IMAGE_EXTENSIONS), None)
    if ext is None:
        raise ValueError("no image member")
    try:
        return decode_image(raw[ext])
    except Exception as err:  # noqa: BLE001 - any decoder failure makes the sample unusable
        raise ValueError(f"undecodable .{ext}: {type(err).__name__}") from None


def teacher_view(teacher: Teacher, img, aug: dict[str, Any]) -> torch.Tensor:
    """The (C, S, S) tensor the teacher gets for view ``aug`` of ``img``."""
    view = apply(img.convert("L" if teacher.channels == 1 else "RGB"), aug, teacher.image_size)
    return to_tensor(view, teacher.mean, teacher.std)


def augmentations(key: str, img, spec: AugmentSpec, n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}/{key}")
    return [draw(spec, img.width, img.height, rng) for _ in range(n)]


@torch.no_grad()
def _label(samples: list[dict[str, Any]], teacher: Teacher, spec: AugmentSpec, n: int, k: int, seed: int) -> None:
    """Add the three reinforce members to each sample (in place), the teacher run in one batch."""
    views, augs = [], []
    for raw in samples:
        img = raw.pop("__image__")
        sample_augs = augmentations(raw["__key__"], img, spec, n, seed)
        for aug in sample_augs:
            x = teacher_view(teacher, img, aug)
            aug["digest"] = view_digest(x)
            views.append(x)
        augs.append(sample_augs)
    logits = teacher(torch.stack(views)).float()
    top = logits.topk(k, dim=-1)
    index = top.indices.reshape(len(samples), n, k).tolist()
    values = top.values.reshape(len(samples), n, k).to(torch.float16).float().tolist()
    for i, raw in enumerate(samples):
        raw["reinforce.json"] = {"augs": augs[i], "index": index[i], "logits": values[i]}


def process_shard(path: str, info: dict[str, Any], out_dir: Path, teacher: Teacher, settings: dict[str, Any],
                  batch: int) -> dict[str, Any]:
    """Reinforce one shard into ``out_dir/<name>`` (atomically); returns and records its result."""
    name = os.path.basename(path)
    spec = AugmentSpec(**settings["augment"])
    part = out_dir / STATE_DIR / f"part-{name}"
    shutil.rmtree(part, ignore_errors=True)
    result: dict[str, Any] = {"name": name, "input": info, "settings": settings, "samples": 0, "rejects": []}
    writer = ShardWriter(part, prefix="part", max_samples_per_shard=1 << 40, max_bytes=1 << 50,
                         producer={"name": PRODUCER})
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        _label(pending, teacher, spec, settings["augs"], settings["topk"], settings["seed"])
        for raw in pending:
            writer.write(raw)
        result["samples"] += len(pending)
        pending.clear()

    try:
        for raw in iter_shard(path, info.get("samples")):
            raw = {k: v for k, v in raw.items() if k != "__url__" and k not in KEYS}
            try:
                raw["__image__"] = find_image(raw)
            except ValueError as err:
                result["rejects"].append([str(raw["__key__"]), str(err)])
                continue
            pending.append(raw)
            if len(pending) * settings["augs"] >= batch:
                flush()
        if pending:
            flush()
    except READ_ERRORS as err:
        writer.abort()
        raise DataError(f"{path}: unreadable shard ({err})") from None
    if result["samples"] == 0:
        writer.abort()
        result["output"] = None
    else:
        (shard,) = writer.close()
        os.replace(part / shard.name, out_dir / name)
        result["output"] = asdict(ShardInfo(name, shard.samples, shard.bytes, shard.sha256))
    shutil.rmtree(part, ignore_errors=True)
    record = out_dir / STATE_DIR / f"{name}.json"
    tmp = record.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, record)  # written last: the shard counts as done only once this exists
    return result


def _done(out_dir: Path, name: str, info: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any] | None:
    record = out_dir / STATE_DIR / f"{name}.json"
    try:
        done = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if done.get("input") != info or done.get("settings") != settings:
        return None
    out = done.get("output")
    if out is not None and (not (out_dir / name).is_file() or (out_dir / name).stat().st_size != out["bytes"]):
        return None
    return done


def reinforce(in_dir: Path, out_dir: Path, teacher: Teacher, augs: int = 4, topk: int = 5, seed: int = 0,
              spec: AugmentSpec | None = None, batch: int = 256) -> dict[str, Any]:
    """Reinforce every shard of the set in ``in_dir`` into ``out_dir``; returns the report."""
    if augs < 1 or topk < 1 or batch < 1:
        raise DataError(f"--augs, --topk and --batch must be >= 1, got {augs}, {topk}, {batch}")
    if topk > teacher.num_classes:
        raise DataError(f"--topk {topk} is more than the teacher's {teacher.num_classes} classes")
    manifest = load_manifest(in_dir)
    if Path(manifest.dir).resolve() == out_dir.resolve():
        raise DataError("--out must differ from --in (shards are rewritten, not edited in place)")
    spec = spec or AugmentSpec()
    settings = {"version": VERSION, "teacher": teacher.describe(), "augs": augs, "topk": topk, "seed": seed,
                "augment": asdict(spec)}
    (out_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
    results, resumed = [], 0
    bar = tqdm(manifest.shards, unit="shard", desc=f"reinforce {in_dir.name}")
    for shard in bar:
        info = asdict(shard)
        done = _done(out_dir, shard.name, info, settings)
        if done is None:
            done = process_shard(os.path.join(manifest.dir, shard.name), info, out_dir, teacher, settings, batch)
        else:
            resumed += 1
        results.append(done)
        bar.set_postfix(samples=sum(r["samples"] for r in results))
    produced = [ShardInfo(**r["output"]) for r in results if r["output"] is not None]
    if not produced:
        raise DataError(f"no usable image in any shard of {in_dir}")
    names = {s.name for s in produced}
    splits = {k: [n for n in v if n in names] for k, v in (manifest.splits or {}).items()}
    producer = {"name": PRODUCER, **settings, "input": str(in_dir),
                **{k: v for k, v in manifest.producer.items() if k == "classes"}}
    write_manifest(str(out_dir), produced, set(manifest.keys) | set(KEYS), producer,
                   {k: v for k, v in splits.items() if v})
    rejects = [{"shard": r["name"], "key": key, "reason": why} for r in results for key, why in r["rejects"]]
    with open(out_dir / "rejects.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rejects)
    return {"shards": len(results), "resumed": resumed, "samples": sum(r["samples"] for r in results),
            "rejected": len(rejects), "teacher": settings["teacher"], "augs": augs, "topk": topk}
