"""`dataset.json`: the manifest every shard set carries.

Schema (format "corefm-shards/1"):

    {"format": "corefm-shards/1",
     "producer": {"name": "corefm.data.image_sets", "version": "0.1.0", "args": {...}},
     "keys": ["cls", "jpg", "txt"],                      # extension keys found in the samples
     "shards": [{"name": "train-000000.tar", "samples": 25, "bytes": 20480, "sha256": "..."}],
     "total_samples": 200,
     "splits": {"train": ["train-000000.tar", ...], "val": [...]}}   # optional

Shard names are relative to the manifest's directory. Loading checks the schema; `check_shards`
compares sizes (cheap, done by the loader); `verify` compares sha256 (reads every byte).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from corefm.data.errors import DataError

MANIFEST_NAME = "dataset.json"
FORMAT = "corefm-shards/1"


@dataclass
class ShardInfo:
    """One shard: file name (relative to the manifest), sample count, size in bytes, sha256 hex."""

    name: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """A loaded `dataset.json`; `dir` is the directory the shard names are relative to."""

    dir: str
    shards: list[ShardInfo]
    keys: list[str]
    producer: dict[str, Any]
    splits: dict[str, list[str]] | None = None
    path: str = field(default="", compare=False)

    @property
    def total_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def by_name(self) -> dict[str, ShardInfo]:
        return {s.name: s for s in self.shards}

    def split_names(self, split: str) -> list[str]:
        """Shard names of one split; DataError naming the known splits if it is absent."""
        if not self.splits or split not in self.splits:
            known = sorted(self.splits or {})
            raise DataError(f"{self.path} has no split {split!r} (splits: {known or 'none'})")
        return list(self.splits[split])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "producer": self.producer,
            "keys": sorted(self.keys),
            "shards": [asdict(s) for s in self.shards],
            "total_samples": self.total_samples,
        }
        if self.splits:
            out["splits"] = {k: list(v) for k, v in sorted(self.splits.items())}
        return out


def _shard_info(item: ShardInfo | Mapping[str, Any]) -> ShardInfo:
    if isinstance(item, ShardInfo):
        return item
    try:
        return ShardInfo(
            name=str(item["name"]),
            samples=int(item["samples"]),
            bytes=int(item["bytes"]),
            sha256=str(item["sha256"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"bad shard entry {item!r}: needs name, samples, bytes, sha256 ({err})")


def write_manifest(
    dir: str,
    shards: Iterable[ShardInfo | Mapping[str, Any]],
    keys: Iterable[str],
    producer: Mapping[str, Any],
    splits: Mapping[str, list[str]] | None = None,
) -> str:
    """Write `dir/dataset.json` atomically (temp file + rename) and return its path."""
    if not isinstance(producer, Mapping) or not producer.get("name"):
        raise DataError("manifest producer must be a dict with at least a 'name'")
    manifest = Manifest(
        dir=dir,
        shards=[_shard_info(s) for s in shards],
        keys=sorted(set(keys)),
        producer=dict(producer),
        splits={k: list(v) for k, v in splits.items()} if splits else None,
    )
    _validate(manifest, os.path.join(dir, MANIFEST_NAME))
    path = os.path.join(dir, MANIFEST_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest.to_json(), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_manifest(dir_or_file: str | os.PathLike) -> Manifest:
    """Load and validate a manifest from a directory or a path to `dataset.json`."""
    path = os.fspath(dir_or_file)
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST_NAME)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"manifest not found: {path}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read manifest {path}: {err}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a dataset.json (not text)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: format is {got!r}, expected {FORMAT!r}")
    for name in ("producer", "keys", "shards", "total_samples"):
        if name not in data:
            raise DataError(f"{path}: missing field {name!r}")
    if not isinstance(data["shards"], list):
        raise DataError(f"{path}: 'shards' must be a list")
    manifest = Manifest(
        dir=os.path.dirname(os.path.abspath(path)),
        shards=[_shard_info(s) for s in data["shards"]],
        keys=list(data["keys"]),
        producer=dict(data["producer"]),
        splits=data.get("splits"),
        path=path,
    )
    _validate(manifest, path)
    if int(data["total_samples"]) != manifest.total_samples:
        raise DataError(
            f"{path}: total_samples is {data['total_samples']} but the shards sum to "
            f"{manifest.total_samples}"
        )
    return manifest


def manifest_classes(spec: str) -> list[str]:
    """Class names a data tool recorded in a shard set's ``dataset.json`` (producer ``classes``), or []
    when ``spec`` is empty, not a local folder with a manifest, or the manifest lists none."""
    path = spec.split("#")[0] if spec else ""
    if not path or not os.path.isfile(os.path.join(path, MANIFEST_NAME)):
        return []
    try:
        return [str(c) for c in load_manifest(path).producer.get("classes", [])]
    except DataError:
        return []


def _validate(manifest: Manifest, path: str) -> None:
    names = [s.name for s in manifest.shards]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: a shard name appears twice")
    for s in manifest.shards:
        if os.path.isabs(s.name) or ".." in s.name.split("/"):
            raise DataError(f"{path}: shard name {s.name!r} must be relative to the manifest")
    for split, members in (manifest.splits or {}).items():
        unknown = sorted(set(members) - set(names))
        if unknown:
            raise DataError(f"{path}: split {split!r} names unknown shard {unknown[0]}")


def check_shards(manifest: Manifest, urls: Iterable[str]) -> None:
    """Cheap check of local shard files against the manifest: listed, present, same size.

    `urls` are paths of shards in the manifest's directory; non-local URLs are ignored.
    Raises DataError naming the first shard that is unlisted, missing or of another size.
    """
    from corefm.data.urls import is_local, local_path  # urls imports this module

    listed = manifest.by_name()
    for url in urls:
        if not is_local(url):
            continue
        path = local_path(url)
        info = listed.get(os.path.basename(path))
        if info is None:
            raise DataError(f"shard {url} is not listed in {manifest.path}")
        try:
            size = os.path.getsize(path)
        except OSError:
            raise DataError(f"shard {url} listed in {manifest.path} is missing") from None
        if size != info.bytes:
            raise DataError(
                f"shard {url} has {size} bytes but {manifest.path} says {info.bytes} "
                "(changed or truncated since it was written)"
            )


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify(manifest: Manifest | str | os.PathLike, dir: str | None = None) -> int:
    """Check every shard's size and sha256 (expensive: reads all bytes); returns shards checked.

    `manifest` is a loaded Manifest or a path to a shard directory / `dataset.json`; `dir`
    overrides where the shards are. Raises one DataError listing the bad shards (missing, other
    size, other checksum).
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(os.fspath(manifest))
    base = dir or manifest.dir
    bad: list[str] = []
    for info in manifest.shards:
        path = os.path.join(base, info.name)
        if not os.path.isfile(path):
            bad.append(f"{info.name} (missing)")
        elif os.path.getsize(path) != info.bytes:
            bad.append(f"{info.name} (size {os.path.getsize(path)} != {info.bytes})")
        elif sha256_file(path) != info.sha256:
            bad.append(f"{info.name} (sha256 differs)")
    if bad:
        shown = ", ".join(bad[:5]) + (f", and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(f"{len(bad)} of {len(manifest.shards)} shards in {base} fail: {shown}")
    return len(manifest.shards)
