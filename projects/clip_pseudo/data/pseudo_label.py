"""Run pseudo-label experts over a shard set and write a new shard set with their labels.

    corefm clip pseudo-label --in data/fm/train --out data/fm-pl/train --experts otsu-seg,canny --workers 2

Input shard ``X.tar`` becomes output shard ``X.tar`` with every input member kept, one extra key
per expert (``seg.png``, ``edges.png``, ``depth.png``, ``boxes.json``, ...) and provenance in the
sample's ``json``: ``{"pseudo_labels": {"canny": {"version": "...", "key": "edges.png"}}}``.

* An expert that raises on a sample: the sample keeps its other labels; that expert's entry gets
  ``"error": "<one line>"`` and no key is written (the trainer masks that loss). Counted per expert.
* An undecodable image, a bad caption (not UTF-8, empty) or bad ``json``: the sample is skipped,
  counted, and listed with its reason in ``OUT/rejects.jsonl``.
* A corrupt input shard: the samples before the fault are kept and the shard is reported.
* Resumable: ``OUT/.pseudo-label/X.json`` records each finished shard (input checksum, experts and
  versions, output size); a rerun skips shards whose record and output still match.
* Parallel over shards (``--workers`` processes, each building its own experts), tqdm progress.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from corefm.data import DataError, ShardWriter, load_manifest, one_line, write_manifest
from corefm.data.manifest import ShardInfo
from corefm.data.shards import READ_ERRORS, iter_shard
from projects.clip_pseudo.data.experts import Expert, build_experts

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tiff", "tif", "ppm")
STATE_DIR = ".pseudo-label"
PRODUCER = "projects.clip_pseudo.data.pseudo_label"


@dataclass
class ShardResult:
    """What one shard's run did; also the resume record written to ``OUT/.pseudo-label/X.json``."""

    name: str
    input: dict[str, Any]
    experts: list[list[str]]
    output: dict[str, Any] | None = None
    samples_in: int = 0
    samples_out: int = 0
    rejects: list[list[str]] = field(default_factory=list)  # [key, reason]
    expert_errors: dict[str, int] = field(default_factory=dict)
    first_errors: dict[str, str] = field(default_factory=dict)  # expert -> first "key: message"
    shard_error: str = ""
    resumed: bool = False


def check_sample(raw: dict[str, Any]) -> tuple[Any, dict]:
    """(decoded PIL image, metadata dict) of a raw sample, or ValueError with the reason to skip it."""
    from PIL import Image

    ext = next((k for k in IMAGE_KEYS if k in raw), None)
    if ext is None:
        raise ValueError("no image member")
    try:
        image = Image.open(io.BytesIO(raw[ext]))
        image.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure means the image is unusable
        raise ValueError(f"undecodable .{ext}: {type(e).__name__}: {one_line(e)}") from None
    if "txt" in raw:
        try:
            text = raw["txt"].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("bad caption: not UTF-8") from None
        if not text.strip():
            raise ValueError("bad caption: empty")
    meta: dict = {}
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
        except ValueError as e:
            raise ValueError(f"bad json metadata: {e}") from None
        if not isinstance(meta, dict):
            raise ValueError("bad json metadata: not an object")
    return image, meta


def label_sample(raw: dict[str, Any], image: Any, meta: dict, experts: list[Expert], result: ShardResult) -> dict:
    """The output sample: input members, each expert's label (or its error) and provenance."""
    sample = {k: v for k, v in raw.items() if k != "__url__" and k not in {e.key for e in experts}}
    provenance = dict(meta.get("pseudo_labels") or {})
    for expert in experts:
        entry = {"version": expert.version, "key": expert.key}
        try:
            others = {k: _decode(raw[k]) for k in expert.inputs if k in raw}
            sample[expert.key] = expert.encode(expert(image, others))
        except Exception as e:  # noqa: BLE001 - an expert's failure must never cost the sample
            entry["error"] = f"{type(e).__name__}: {one_line(e)}"[:300]
            result.expert_errors[expert.name] = result.expert_errors.get(expert.name, 0) + 1
            result.first_errors.setdefault(expert.name, f"{raw['__key__']}: {entry['error']}")
        provenance[expert.name] = entry
    sample["json"] = {**meta, "pseudo_labels": provenance}
    return sample


def _decode(data: bytes) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


_EXPERTS: list[Expert] = []


def _init_worker(experts: list[Expert]) -> None:
    global _EXPERTS
    _EXPERTS = experts
    try:
        import torch

        torch.set_num_threads(1)  # one process per core already
    except ImportError:
        pass


def process_shard(job: tuple[str, dict[str, Any], str]) -> ShardResult:
    """Label one input shard into ``out_dir/<name>`` (atomically); runs in a worker process."""
    in_path, info, out_dir = job
    name = os.path.basename(in_path)
    experts = _EXPERTS
    result = ShardResult(name, info, [[e.name, e.version, e.key] for e in experts])
    part_dir = Path(out_dir) / STATE_DIR / f"part-{name}"
    shutil.rmtree(part_dir, ignore_errors=True)
    producer = {"name": PRODUCER, "input": name}
    writer = ShardWriter(part_dir, prefix="part", max_samples_per_shard=1 << 40, max_bytes=1 << 50, producer=producer)
    try:
        for raw in iter_shard(in_path, info.get("samples")):
            result.samples_in += 1
            try:
                image, meta = check_sample(raw)
            except ValueError as e:
                result.rejects.append([raw["__key__"], str(e)])
                continue
            writer.write(label_sample(raw, image, meta, experts, result))
            result.samples_out += 1
    except READ_ERRORS as e:
        result.shard_error = f"{type(e).__name__}: {one_line(e)}"
    if result.samples_out == 0:
        writer.abort()
    else:
        (shard,) = writer.close()
        os.replace(part_dir / shard.name, Path(out_dir) / name)
        result.output = asdict(ShardInfo(name, shard.samples, shard.bytes, shard.sha256))
    shutil.rmtree(part_dir, ignore_errors=True)
    record = Path(out_dir) / STATE_DIR / f"{name}.json"
    tmp = record.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(result), indent=1))
    os.replace(tmp, record)  # written last: a shard counts as done only once this exists
    return result


def _resumable(out_dir: Path, name: str, info: dict, experts: list[list[str]]) -> ShardResult | None:
    record = out_dir / STATE_DIR / f"{name}.json"
    if not record.is_file():
        return None
    try:
        done = ShardResult(**json.loads(record.read_text()))
    except (ValueError, TypeError):
        return None
    if done.input != info or done.experts != experts or done.shard_error:
        return None
    if done.output is not None:
        path = out_dir / name
        if not path.is_file() or path.stat().st_size != done.output["bytes"]:
            return None
    done.resumed = True
    return done


def run(in_dir: Path, out_dir: Path, experts: str | list[str], workers: int = 1) -> dict[str, Any]:
    """Label every shard of the set in ``in_dir`` into ``out_dir``; returns the summary report."""
    manifest = load_manifest(in_dir)
    if Path(manifest.dir).resolve() == out_dir.resolve():
        raise DataError("--out must differ from --in (shards are rewritten, not edited in place)")
    built = build_experts(experts)
    described = [[e.name, e.version, e.key] for e in built]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STATE_DIR).mkdir(exist_ok=True)
    results: list[ShardResult] = []
    todo = []
    for shard in manifest.shards:
        info = asdict(shard)
        done = _resumable(out_dir, shard.name, info, described)
        if done is not None:
            results.append(done)
        else:
            todo.append((os.path.join(manifest.dir, shard.name), info, str(out_dir)))
    bar = tqdm(total=len(manifest.shards), initial=len(results), unit="shard", desc=f"pseudo-label {in_dir.name}")
    errors: Counter = Counter()

    def collect(result: ShardResult) -> None:
        results.append(result)
        errors.update(result.expert_errors)
        bar.update(1)
        bar.set_postfix(samples=sum(r.samples_out for r in results), rejected=sum(len(r.rejects) for r in results),
                        expert_errors=sum(errors.values()))

    if workers <= 1 or len(todo) <= 1:
        _init_worker(built)
        for job in todo:
            collect(process_shard(job))
    else:
        # spawn: experts holding torch/OpenCV state must not be forked mid-initialisation
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(built,)) as pool:
            for result in pool.imap_unordered(process_shard, todo):
                collect(result)
    bar.close()
    return _finish(manifest, out_dir, built, described, sorted(results, key=lambda r: r.name), str(in_dir))


def _finish(manifest, out_dir: Path, experts: list[Expert], described: list[list[str]],
            results: list[ShardResult], source: str) -> dict[str, Any]:
    produced = [ShardInfo(**r.output) for r in results if r.output is not None]
    if not produced:
        raise DataError(f"no samples survived in any shard of {source} (see {out_dir / 'rejects.jsonl'})")
    names = {s.name for s in produced}
    splits = {k: [n for n in v if n in names] for k, v in (manifest.splits or {}).items()}
    keys = set(manifest.keys) | {e.key for e in experts} | {"json"}
    producer = {"name": PRODUCER, "version": "1", "input": source, "experts": described,
                **{k: v for k, v in manifest.producer.items() if k == "classes"}}
    write_manifest(str(out_dir), produced, keys, producer, {k: v for k, v in splits.items() if v})
    with open(out_dir / "rejects.jsonl", "w") as f:
        for r in results:
            for key, reason in r.rejects:
                f.write(json.dumps({"shard": r.name, "key": key, "reason": reason}) + "\n")
    errors: Counter = Counter()
    for r in results:
        errors.update(r.expert_errors)
    report = {
        "shards": len(results), "resumed": sum(r.resumed for r in results),
        "samples_in": sum(r.samples_in for r in results), "samples_out": sum(r.samples_out for r in results),
        "rejected": sum(len(r.rejects) for r in results),
        "reject_reasons": dict(Counter(reason.split(":")[0] for r in results for _, reason in r.rejects)),
        "expert_errors": dict(errors),
        "first_errors": {k: v for r in results for k, v in r.first_errors.items()},
        "bad_shards": {r.name: r.shard_error for r in results if r.shard_error},
        "experts": described,
    }
    (out_dir / "pseudo_label_report.json").write_text(json.dumps(report, indent=1))
    return report


def print_report(report: dict[str, Any], out_dir: Path) -> None:
    print(f"{out_dir}: {report['samples_out']:,} of {report['samples_in']:,} samples labelled in "
          f"{report['shards']} shards ({report['resumed']} already done)")
    for name, version, key in report["experts"]:
        n = report["expert_errors"].get(name, 0)
        print(f"  expert {name} {version} -> {key}: {n} failed" + (f" (first: {report['first_errors'][name]})" if n else ""))
    if report["rejected"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in report["reject_reasons"].items())
        print(f"  skipped {report['rejected']} samples ({reasons}); listed in {out_dir / 'rejects.jsonl'}")
    for shard, error in report["bad_shards"].items():
        print(f"  corrupt input shard {shard}: {error} (samples before the fault kept)")
