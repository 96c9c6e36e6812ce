"""A small reader for the metadata section of GGUF files (llama.cpp's model format).

Only the key/value metadata is read (that is where a vocabulary lives); tensor data is never
touched, so a vocabulary-only GGUF of 700 KB and a 4 GB model file cost the same. Format
(little-endian): magic ``GGUF``, uint32 version (2 or 3), uint64 tensor count, uint64 key/value
count, then per key: a string key, a uint32 value type and the value. Strings are a uint64 byte
length plus UTF-8 bytes; arrays are a uint32 element type, a uint64 length and the elements.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

from corefm.errors import CheckpointError

# value type id -> struct format of a scalar (None: string, array handled separately)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, f: BinaryIO, path: Path) -> None:
        self.f = f
        self.path = path

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise CheckpointError(f"{self.path}: truncated GGUF file")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.read(self.unpack("<Q")).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALARS:
                # One struct call per array: the 32k scores/types arrays stay fast.
                fmt = _SCALARS[etype]
                return list(struct.unpack(f"<{n}{fmt[1:]}", self.read(n * struct.calcsize(fmt))))
            return [self.value(etype) for _ in range(n)]
        raise CheckpointError(f"{self.path}: unknown GGUF value type {vtype}")


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """Return the GGUF file's metadata as a dict (e.g. ``tokenizer.ggml.tokens`` -> list[str])."""
    path = Path(path)
    with open(path, "rb") as f:
        r = _Reader(f, path)
        if r.read(4) != b"GGUF":
            raise CheckpointError(f"{path} is not a GGUF file (bad magic)")
        version = r.unpack("<I")
        if version not in (2, 3):
            raise CheckpointError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        r.unpack("<Q")  # tensor count: not needed for metadata
        n_kv = r.unpack("<Q")
        meta: dict[str, Any] = {"GGUF.version": version}
        for _ in range(n_kv):
            key = r.string()
            meta[key] = r.value(r.unpack("<I"))
        return meta
