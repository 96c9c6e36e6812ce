"""Write webdataset shards plus their `dataset.json`, deterministically and atomically.

Each sample becomes tar members `<__key__>.<ext>` (sorted by ext), with mtime 0, uid/gid 0 and
mode 0644, so the same samples always give byte-identical shards. A shard is written as
`name.tar.tmp` and renamed when complete; the manifest is written last, on `close()`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from typing import Any, Iterable, Mapping

import numpy as np

from corefm.data.decode import REFUSED_EXTENSIONS
from corefm.data.errors import DataError
from corefm.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, load_manifest, write_manifest

_BLOCK = 512


class _HashingFile:
    """Write-only file wrapper that hashes and counts what tarfile writes through it."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._f.write(data)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        self._f.close()


def encode_value(ext: str, value: Any) -> bytes:
    """Bytes stored for one member: bytes as is, str as utf-8, int as decimal text (`.cls`),
    dict/list as JSON (ext ending in `json`), np.ndarray as `.npy` (ext ending in `npy`)."""
    last = ext.rsplit(".", 1)[-1].lower()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value)).encode("ascii")
    if isinstance(value, (dict, list)) and last == "json":
        return json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")
    if isinstance(value, np.ndarray) and last == "npy":
        if value.dtype.hasobject:
            raise DataError(f"cannot store an object array under .{ext} (it would need pickle)")
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return buf.getvalue()
    raise DataError(f"cannot store {type(value).__name__} under .{ext}")


def _check_ext(ext: str) -> None:
    if not ext or ext.startswith(".") or "/" in ext or ext.startswith("__"):
        raise DataError(f"bad sample key {ext!r}: use an extension such as 'jpg' or 'seg.png'")
    if ext.rsplit(".", 1)[-1].lower() in REFUSED_EXTENSIONS:
        raise DataError(f"refusing to write .{ext}: pickle-based formats are not allowed")


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key or "." in key.rsplit("/", 1)[-1]:
        raise DataError(f"bad __key__ {key!r}: need a non-empty string without '.' in its name")
    return key


class _Shard:
    """One tar being written under a temporary name."""

    def __init__(self, out_dir: str, name: str) -> None:
        self.name = name
        self.path = os.path.join(out_dir, name)
        self.file = _HashingFile(self.path + ".tmp")
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.PAX_FORMAT)
        self.samples = 0
        self.last_key: str | None = None

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        if key == self.last_key:
            # consecutive samples with one key would merge into one sample on reading
            raise DataError(f"__key__ {key!r} written twice in a row to {self.name}")
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tar.addfile(info, io.BytesIO(data))
        self.samples += 1
        self.last_key = key

    def finish(self) -> ShardInfo:
        self.tar.close()
        self.file.close()
        os.replace(self.path + ".tmp", self.path)
        return ShardInfo(self.name, self.samples, self.file.size, self.file.sha256.hexdigest())

    def abort(self) -> None:
        try:
            self.tar.close()
            self.file.close()
        finally:
            if os.path.exists(self.path + ".tmp"):
                os.remove(self.path + ".tmp")


class ShardWriter:
    """Context manager writing samples into `<out_dir>/<prefix>-000000.tar`, ... + `dataset.json`.

    Args:
        out_dir: created if missing. An existing `dataset.json` there is merged: shards named
            `<prefix>-*` are replaced, other splits kept (one writer per directory at a time).
        prefix: shard name prefix and split name in the manifest ("train", "val", ...).
        max_samples_per_shard, max_bytes: roll over to a new shard when either would be exceeded
            (a single sample larger than max_bytes still gets its own shard).
        producer: provenance for the manifest: {"name", "version", "args"}.
        num_shards: if set, deal samples round-robin into exactly this many shards (sample i goes
            to shard i % num_shards; the max_* limits are then ignored), e.g. to make sure there
            are at least world_size * num_workers shards. Fewer samples than shards is an error.

    `write(sample)`: `sample["__key__"]` plus extension keys holding bytes, str, int, dict/list
    (`*json`), or np.ndarray (`*npy`); other `__meta__` keys are ignored. If the `with` body
    raises, temporary files are removed and no manifest is written.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        prefix: str = "train",
        max_samples_per_shard: int = 10_000,
        max_bytes: int = 1 << 30,
        producer: Mapping[str, Any] | None = None,
        num_shards: int | None = None,
    ) -> None:
        if not prefix or "/" in prefix or "." in prefix:
            raise DataError(f"bad shard prefix {prefix!r}")
        if max_samples_per_shard < 1 or max_bytes < 1 or (num_shards is not None and num_shards < 1):
            raise DataError("max_samples_per_shard, max_bytes and num_shards must be positive")
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.prefix = out_dir, prefix
        self.max_samples, self.max_bytes, self.num_shards = max_samples_per_shard, max_bytes, num_shards
        self.producer = dict(producer or {"name": "corefm.data.ShardWriter", "version": "", "args": {}})
        self.shards: list[ShardInfo] = []
        self.keys: set[str] = set()
        self.samples = 0
        self._open: dict[int, _Shard] = {}
        self._next_index = 0
        self._current_bytes = 0
        self._closed = False

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _name(self, index: int) -> str:
        return f"{self.prefix}-{index:06d}.tar"

    def write(self, sample: Mapping[str, Any]) -> None:
        """Encode and append one sample (see the class docstring for the value types)."""
        if self._closed:
            raise DataError("ShardWriter is closed")
        if "__key__" not in sample:
            raise DataError(f"sample has no __key__ (keys: {sorted(sample)})")
        key = _check_key(sample["__key__"])
        members = []
        for ext in sorted(k for k in sample if not k.startswith("__")):
            _check_ext(ext)
            members.append((ext, encode_value(ext, sample[ext])))
        if not members:
            raise DataError(f"sample {key!r} has no data keys")
        self._shard_for(members).add(key, members)
        self.keys.update(ext for ext, _ in members)
        self.samples += 1

    def _shard_for(self, members: list[tuple[str, bytes]]) -> _Shard:
        if self.num_shards is not None:
            index = self.samples % self.num_shards
            if index not in self._open:
                self._open[index] = _Shard(self.out_dir, self._name(index))
            return self._open[index]
        size = sum(_BLOCK + -(-len(data) // _BLOCK) * _BLOCK for _, data in members)
        shard = self._open.get(self._next_index - 1)
        if shard is not None and shard.samples > 0 and (
            shard.samples >= self.max_samples or self._current_bytes + size > self.max_bytes
        ):
            self.shards.append(self._open.pop(self._next_index - 1).finish())
            shard = None
        if shard is None:
            shard = _Shard(self.out_dir, self._name(self._next_index))
            self._open[self._next_index] = shard
            self._next_index += 1
            self._current_bytes = 0
        self._current_bytes += size
        return shard

    def close(self) -> list[ShardInfo]:
        """Finish all shards, write/merge `dataset.json`; returns this writer's shard infos."""
        if self._closed:
            return self.shards
        if self.num_shards is not None and self.samples < self.num_shards:
            self.abort()
            raise DataError(f"{self.samples} samples cannot fill num_shards={self.num_shards} shards")
        if self.samples == 0:
            self.abort()
            raise DataError(f"no samples written to {self.out_dir} ({self.prefix})")
        for index in sorted(self._open):
            self.shards.append(self._open.pop(index).finish())
        self.shards.sort(key=lambda s: s.name)
        self._closed = True
        self._write_manifest()
        return self.shards

    def abort(self) -> None:
        """Drop the shards still being written (their temp files) and write no manifest."""
        for shard in self._open.values():
            shard.abort()
        self._open.clear()
        self._closed = True

    def _write_manifest(self) -> None:
        ours = {s.name for s in self.shards}
        kept: list[ShardInfo] = []
        splits: dict[str, list[str]] = {}
        keys = set(self.keys)
        if os.path.exists(os.path.join(self.out_dir, MANIFEST_NAME)):
            old: Manifest = load_manifest(self.out_dir)
            mine = f"{self.prefix}-"
            kept = [s for s in old.shards if not s.name.startswith(mine) and s.name not in ours]
            names = {s.name for s in kept}
            for split, members in (old.splits or {}).items():
                if split != self.prefix and set(members) <= names:
                    splits[split] = members
            if kept:
                keys.update(old.keys)
        splits[self.prefix] = [s.name for s in self.shards]
        shards = sorted(kept + self.shards, key=lambda s: s.name)
        write_manifest(self.out_dir, shards, keys, self.producer, splits)


def write_split(out_dir: str, prefix: str, samples: Iterable[Mapping[str, Any]], **kwargs: Any) -> list[ShardInfo]:
    """Write all `samples` as split `prefix` of `out_dir` (kwargs go to ShardWriter)."""
    with ShardWriter(out_dir, prefix=prefix, **kwargs) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.shards
