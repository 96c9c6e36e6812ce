"""Image-text shards (image + ``txt`` caption + ``json`` metadata [+ ``cls``]) for CLIP training.

Sources (``--source``):
* ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` (official 60k/10k split), captions from
  varied templates and class synonyms ("a black and white photo of a sneaker", "a picture of a
  pair of pants"), plus ``cls``; zero-shot eval then uses other (open_clip's) templates.
* ``folder:PATH``: every image under PATH; the caption is a sidecar ``<stem>.txt`` or, with
  ``--caption-template "a photo of a {}"``, the parent folder's name in the template.
* ``openclipart[:ROOT]``: Debian's ``openclipart-svg`` + ``openclipart-png`` (ROOT defaults to
  /usr/share/openclipart): the PNG renderings, captioned with each SVG's human-written title and
  keywords ("Acquila: bird"); creator names, "unsorted", titles shared by 5+ drawings (collection
  names) and the shapes/buttons/special (gradients, patterns) folders are dropped, and identical
  drawings kept once.
* ``csv:FILE`` / ``tsv:FILE`` / ``jsonl:FILE``: rows of (image path or http(s)/file URL, caption);
  columns by ``--image-column`` / ``--caption-column`` (default: filepath/image/path/url/file and
  caption/title/text); relative paths are relative to the table's folder.

Output: ``OUT/train`` and ``OUT/val`` shard sets (folder/table rows go to val by a seeded hash of
their key, ``--val-fraction``). A row whose image cannot be read or decoded, or whose caption is
missing, empty, not text or a placeholder ("nan", "null"), is skipped, counted, and listed with
its reason in ``OUT/rejects.jsonl``; the run fails only if nothing at all is usable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from corefm.data import DataError, ShardWriter

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif"}
PIL_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # stored as is; other formats become PNG
PLACEHOLDERS = {"nan", "none", "null", "n/a", "-", "untitled"}
MAX_CAPTION_CHARS = 1000
MAX_DOWNLOAD = 50 << 20

FASHION_NAMES = (("t-shirt", "top", "tee"), ("trouser", "pair of trousers", "pair of pants"),
                 ("pullover", "sweater"), ("dress",), ("coat", "jacket"), ("sandal",),
                 ("shirt", "button-up shirt"), ("sneaker", "running shoe"), ("bag", "handbag"),
                 ("ankle boot", "boot"))
FASHION_TEMPLATES = ("a photo of a {}.", "a black and white photo of a {}.", "a low resolution photo of a {}.",
                     "a picture of a {}.", "an image of a {}.", "a grayscale image of the {}.",
                     "a product photo of a {}.", "a {} on a black background.", "a small photo of the {}.", "{}")


class Reject(Exception):
    """One row is unusable; the message is the reason written to rejects.jsonl."""


@dataclass
class Item:
    key: str
    split: str
    caption: Any
    load: Callable[[], bytes]
    meta: dict = field(default_factory=dict)
    cls: int | None = None
    error: str = ""  # set for a row that could not even be parsed


def _split(key: str, val_fraction: float, seed: int) -> str:
    h = int.from_bytes(hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest(), "little")
    return "val" if h / 2**64 < val_fraction else "train"


def fashion_items(seed: int = 0, limit: int = 0) -> Iterator[Item]:
    from corefm.data.image_sets import fashion_mnist

    rng = random.Random(seed)
    for split, (images, labels) in zip(("train", "val"), fashion_mnist()[:2]):
        count = min(limit, len(images)) if limit else len(images)
        for i in range(count):
            names = FASHION_NAMES[int(labels[i])]
            # the canonical name half the time, else a synonym; one template per sample
            name = names[0] if len(names) == 1 or rng.random() < 0.5 else rng.choice(names[1:])
            caption = rng.choice(FASHION_TEMPLATES).format(name)
            yield Item(f"fmnist-{split}-{i:06d}", split, caption, _png_loader(images[i]),
                       {"source": "fashion-mnist", "index": i, "class": names[0]}, int(labels[i]))


def _png_loader(arr: np.ndarray) -> Callable[[], bytes]:
    def load() -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()
    return load


def folder_items(root: Path, template: str, val_fraction: float, seed: int) -> Iterator[Item]:
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    for i, path in enumerate(files):
        rel = path.relative_to(root).as_posix()
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            caption: Any = sidecar.read_bytes()
        elif template:
            caption = template.format(path.parent.name.replace("_", " ")) if path.parent != root else None
        else:
            caption = None
        key = f"img-{i:07d}"
        yield Item(key, _split(rel, val_fraction, seed), caption, path.read_bytes, {"source": rel})


OPENCLIPART = Path("/usr/share/openclipart")
_DC, _CC, _RDF = "{http://purl.org/dc/elements/1.1/}", "{http://web.resource.org/cc/}", \
    "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"


def _svg_meta(path: Path) -> tuple[str, list[str], str]:
    """(title, keywords, creator) from an SVG's RDF metadata; empty when it has none."""
    import xml.etree.ElementTree as ET

    try:
        work = next(ET.parse(path).getroot().iter(f"{_CC}Work"), None)
    except ET.ParseError:
        return "", [], ""
    if work is None:
        return "", [], ""
    creator = work.findtext(f"{_DC}creator/{_CC}Agent/{_DC}title") or ""
    keywords = [li.text or "" for li in work.iterfind(f"{_DC}subject/{_RDF}Bag/{_RDF}li")]
    return (work.findtext(f"{_DC}title") or "").strip(), keywords, creator.strip()


def openclipart_items(root: Path, val_fraction: float, seed: int) -> Iterator[Item]:
    svgs = sorted((root / "svg").rglob("*.svg"))
    if not svgs or not (root / "png").is_dir():
        raise DataError(f"openclipart not found under {root}: apt-get install openclipart-svg openclipart-png")
    metas, seen = {}, set()
    for svg in svgs:
        rel = svg.relative_to(root / "svg")
        digest = hashlib.sha1(svg.read_bytes()).hexdigest()
        if rel.parts[0] not in ("shapes", "buttons", "special") and digest not in seen:
            seen.add(digest)
            metas[rel] = _svg_meta(svg)
    shared = Counter(title.lower() for title, _, _ in metas.values())
    for i, (rel, (title, keywords, creator)) in enumerate(metas.items()):
        title = title.split(" - ", 1)[1] if title.lower().startswith("clipart by") and " - " in title else title
        title = "" if shared[title.lower()] >= 5 else " ".join(title.replace("_", " ").split())
        who = {w for w in creator.lower().split()} | {creator.lower()}
        words = [k.strip() for k in keywords if k and k.strip() and k.strip().lower() not in who | {"unsorted", title.lower()}]
        caption = title + (": " if title and words else "") + ", ".join(dict.fromkeys(words))
        png = (root / "png" / rel).with_suffix(".png")
        yield Item(f"oca-{i:06d}", _split(str(rel), val_fraction, seed), caption or None, png.read_bytes,
                   {"source": str(rel), "creator": creator, "license": "public domain"})


def _rows(path: Path) -> Iterator[dict | str]:
    """Table rows as dicts; an unparsable JSONL line is yielded as its error text."""
    # surrogateescape: a row with bytes that are not UTF-8 reads through (its caption is rejected
    # below, with its reason) instead of stopping the whole table.
    if path.suffix.lower() == ".jsonl" or path.suffix.lower() == ".json":
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                        yield row if isinstance(row, dict) else f"line {n}: not a JSON object"
                    except ValueError as e:
                        yield f"line {n}: bad JSON ({e.msg})"
        return
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        yield from csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")


def _pick(columns: list[str], wanted: str, defaults: tuple[str, ...], what: str, path: Path) -> str:
    choices = [wanted] if wanted else list(defaults)
    for c in choices:
        if c in columns:
            return c
    raise DataError(f"{path}: no {what} column (looked for {', '.join(choices)}; columns: {', '.join(columns)})")


def table_items(path: Path, image_col: str, caption_col: str, val_fraction: float, seed: int) -> Iterator[Item]:
    if not path.is_file():
        raise DataError(f"table not found: {path}")
    rows = _rows(path)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path} has no rows")
    columns = list(first) if isinstance(first, dict) else []
    icol = _pick(columns, image_col, ("filepath", "image", "path", "url", "file"), "image", path)
    ccol = _pick(columns, caption_col, ("caption", "title", "text"), "caption", path)
    for i, row in enumerate(chain([first], rows)):
        key = f"row-{i:08d}"
        if isinstance(row, str):
            yield Item(key, "train", None, bytes, {"source": str(path)}, error=f"bad row: {row}")
            continue
        ref = str(row.get(icol) or "")
        yield Item(key, _split(key, val_fraction, seed), row.get(ccol), _loader(ref, path.parent),
                   {"source": ref, "row": i})


def _loader(ref: str, base: Path) -> Callable[[], bytes]:
    def load() -> bytes:
        if not ref:
            raise Reject("no image path or URL")
        if ref.startswith(("http://", "https://", "file:")):
            try:
                req = urllib.request.Request(ref, headers={"User-Agent": "corefm-data/1"})
                with urllib.request.urlopen(req, timeout=20) as r:
                    data = r.read(MAX_DOWNLOAD + 1)
            except (OSError, ValueError) as e:
                raise Reject(f"download failed: {type(e).__name__}: {e}") from None
            if len(data) > MAX_DOWNLOAD:
                raise Reject(f"download failed: larger than {MAX_DOWNLOAD >> 20} MB")
            return data
        path = Path(ref) if Path(ref).is_absolute() else base / ref
        try:
            return path.read_bytes()
        except OSError as e:
            raise Reject(f"unreadable image file: {e.strerror or e}: {path}") from None
    return load


def clean_caption(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise Reject("bad caption: not UTF-8") from None
    if value is None or not isinstance(value, str):
        raise Reject("bad caption: missing" if value is None else f"bad caption: {type(value).__name__}, not text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes kept as surrogates by _rows
        raise Reject("bad caption: not UTF-8") from None
    text = " ".join(value.split())
    if not text or text.lower() in PLACEHOLDERS:
        raise Reject(f"bad caption: {'empty' if not text else 'placeholder ' + repr(text)}")
    if len(text) > MAX_CAPTION_CHARS:
        raise Reject(f"bad caption: over {MAX_CAPTION_CHARS} characters")
    if sum(not (c.isprintable()) for c in text) > 0:
        raise Reject("bad caption: control characters")
    return text


def encode_item(item: Item, max_size: int) -> dict[str, Any]:
    """The shard sample of one item, or Reject with the reason."""
    if item.error:
        raise Reject(item.error)
    text = clean_caption(item.caption)
    try:
        data = item.load()
    except OSError as e:
        raise Reject(f"unreadable image file: {e.strerror or e}") from None
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure: the image is unusable
        raise Reject(f"undecodable image: {type(e).__name__}: {e}") from None
    ext = PIL_EXT.get(img.format or "")
    if ext is None or (max_size and max(img.size) > max_size):
        if max_size and max(img.size) > max_size:
            img.thumbnail((max_size, max_size), Image.BICUBIC)
        fmt = "JPEG" if img.mode == "RGB" and ext == "jpg" else "PNG"
        buf = io.BytesIO()
        img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        data, ext = buf.getvalue(), PIL_EXT[fmt]
    sample = {"__key__": item.key, ext: data, "txt": text,
              "json": {**item.meta, "width": img.width, "height": img.height}}
    if item.cls is not None:
        sample["cls"] = item.cls
    return sample


def _try(item: Item, max_size: int) -> tuple[Item, dict | None, str]:
    try:
        return item, encode_item(item, max_size), ""
    except Reject as e:
        return item, None, str(e)


def build(source: str, out: Path, *, samples_per_shard: int = 1000, val_fraction: float = 0.05,
          caption_template: str = "", image_column: str = "", caption_column: str = "", max_size: int = 0,
          workers: int = 8, limit: int = 0, seed: int = 0) -> dict[str, Any]:
    """Write ``out/train`` and ``out/val``; returns {split: samples, "rejected": n, "reasons": {...}}."""
    kind, _, arg = source.partition(":")
    classes: list[str] = []
    if source == "fashion-mnist":
        items = fashion_items(seed, limit)
        classes = [n[0] for n in FASHION_NAMES]
    elif kind == "folder" and arg:
        items = folder_items(Path(arg), caption_template, val_fraction, seed)
    elif kind == "openclipart":
        items = openclipart_items(Path(arg) if arg else OPENCLIPART, val_fraction, seed)
    elif kind in ("csv", "tsv", "jsonl") and arg:
        items = table_items(Path(arg), image_column, caption_column, val_fraction, seed)
    else:
        raise DataError(f"unknown source {source!r} (use fashion-mnist, openclipart[:ROOT], folder:PATH, csv:FILE, "
                        "tsv:FILE or jsonl:FILE)")
    if limit and source != "fashion-mnist":
        items = islice(items, limit)
    first = next(items, None)  # a missing source fails here, as one line, before any output exists
    items = chain([first], items) if first is not None else iter(())
    producer = {"name": "projects.clip_pseudo.data.image_text", "version": "1", "source": source,
                **({"classes": classes} if classes else {})}
    writers: dict[str, ShardWriter] = {}
    counts: Counter = Counter()
    reasons: Counter = Counter()
    out.mkdir(parents=True, exist_ok=True)
    try:
        _write(items, out, writers, counts, reasons, producer, samples_per_shard, max_size, workers, kind)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    if not writers:
        raise DataError(f"no usable image-text pairs in {source} ({dict(reasons)}; see {out / 'rejects.jsonl'})")
    for writer in writers.values():
        writer.close()
    return {**counts, "rejected": sum(reasons.values()), "reasons": dict(reasons)}


def _write(items: Iterator[Item], out: Path, writers: dict, counts: Counter, reasons: Counter, producer: dict,
           samples_per_shard: int, max_size: int, workers: int, kind: str) -> None:
    with open(out / "rejects.jsonl", "w") as rejects, ThreadPoolExecutor(max(1, workers)) as pool, \
            tqdm(desc=f"image-text {kind}", unit="img") as bar:
        while chunk := list(islice(items, 256)):
            for item, sample, reason in pool.map(lambda it: _try(it, max_size), chunk):  # keeps row order
                bar.update(1)
                if sample is None:
                    reasons[reason.split(":")[0]] += 1
                    rejects.write(json.dumps({"key": item.key, "source": item.meta.get("source"), "reason": reason}) + "\n")
                    continue
                if item.split not in writers:
                    writers[item.split] = ShardWriter(out / item.split, prefix=item.split, producer=producer,
                                                      max_samples_per_shard=samples_per_shard)
                writers[item.split].write(sample)
                counts[item.split] += 1
