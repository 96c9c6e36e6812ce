"""Read one shard (local path, `pipe:` command or http(s) URL) into raw samples.

A raw sample is {"__key__": str, "__url__": str, "<ext>": bytes, ...}: consecutive tar members
sharing the name up to the first '.' of the file name (webdataset's grouping), extensions
lower-cased. Nothing is decoded here.

The tar reader is our own streaming reader of the POSIX/GNU formats (ustar headers with the
prefix field, pax `path`/`size` records, GNU long names; gzip/bz2/xz compressed streams; GNU
sparse members are refused as unreadable, with the member named):
- it is strict where tarfile is lenient: tarfile ends an archive silently at a truncated or
  garbled header past offset 0, so a shard cut at a member boundary would look complete; here
  only the zero block ends an archive, anything else is a ShardReadError;
- it costs a few microseconds per member instead of tarfile's TarInfo parsing of every field,
  which matters when decoding is cheap (token or raw-byte shards).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from typing import BinaryIO, Iterator

from webdataset.gopen import gopen

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")  # regular file (7 = contiguous file, read as regular)


class ShardReadError(Exception):
    """A shard could not be read to its end (raised after the samples read before the fault)."""


# What reading a bad or missing shard can raise: files/pipes/curl (OSError), our tar checks
# (ShardReadError), compressed streams (EOFError, zlib.error, lzma.LZMAError), gopen's unknown
# URL schemes (ValueError).
READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError, ShardReadError)


class _Prefixed:
    """A stream with `head` (already read to sniff compression) put back in front."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(n)
        if n < 0:
            out, self.head = self.head + self.stream.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out if len(out) == n else out + self.stream.read(n - len(out))


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Read n bytes, fewer only at end of stream (pipes may return short reads)."""
    data = f.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _number(field: bytes) -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256 if the top bit is set."""
    if field[0] == 0x80:
        return int.from_bytes(field[1:], "big")
    if field[0] & 0x80:
        raise ShardReadError("negative base-256 number in a tar header")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ShardReadError(f"bad number {text[:12]!r} in a tar header") from None


def _checksum_ok(buf: bytes) -> bool:
    try:
        stored = _number(buf[148:156])
    except ShardReadError:
        return False
    # the checksum field counts as 8 spaces; some old writers summed signed bytes
    if stored == sum(buf[:148]) + 256 + sum(buf[156:]):
        return True
    signed = sum(b - 256 if b > 127 else b for b in buf[:148] + buf[156:])
    return stored == signed + 256


def _pax_records(data: bytes) -> dict[str, str]:
    """Parse pax extended header records "<len> <key>=<value>\\n"."""
    out, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= 0:
            raise ShardReadError("bad pax record length")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _open_tar_stream(stream: BinaryIO) -> BinaryIO:
    """Undo gzip/bz2/xz compression, sniffed from the first bytes."""
    head = _read_exact(stream, 6)
    raw = _Prefixed(head, stream)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[arg-type]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw, mode="rb")  # type: ignore[arg-type]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw, mode="rb")  # type: ignore[arg-type]
    return raw  # type: ignore[return-value]


def tar_members(f: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """Yield (name, data) of the regular files of an uncompressed tar stream, in order.

    Raises ShardReadError at a truncated or corrupt header, truncated data, or a missing
    end-of-archive zero block, after yielding every member before it.
    """
    offset = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        buf = _read_exact(f, BLOCK)
        if len(buf) < BLOCK:
            what = "empty file" if offset == 0 and not buf else "missing end-of-archive block" if not buf else "truncated header"
            raise ShardReadError(f"truncated or corrupt tar at byte {offset}: {what}")
        if buf == _ZERO_BLOCK:
            return
        if not _checksum_ok(buf):
            raise ShardReadError(f"truncated or corrupt tar at byte {offset}: bad header checksum")
        kind = buf[156:157]
        if kind == b"S" or any(key.startswith("GNU.sparse.") for key in pax):
            # GNU sparse files (tar -S): type S in gnu format, a pax-described map in posix format;
            # neither holds the file's bytes as they are, so the member is refused, never misread.
            name = pax.get("GNU.sparse.name") or pax.get("path") or long_name \
                or buf[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            raise ShardReadError(f"tar member {name!r} at byte {offset} is a GNU sparse file, which corefm "
                                 "does not read (write the shard without tar -S / --sparse)")
        size = int(pax["size"]) if "size" in pax and kind not in (b"x", b"g") else _number(buf[124:136])
        padded = -(-size // BLOCK) * BLOCK
        offset += BLOCK
        if kind in (b"x", b"g", b"L", b"K") or kind in _REGULAR:
            data = _read_exact(f, size)
            if len(data) != size:
                raise ShardReadError(f"unexpected end of data at byte {offset}")
            if padded != size and len(_read_exact(f, padded - size)) != padded - size:
                raise ShardReadError(f"unexpected end of data at byte {offset + size}")
        elif padded and len(_read_exact(f, padded)) != padded:  # directories, links, ...: skip
            raise ShardReadError(f"unexpected end of data at byte {offset}")
        offset += padded
        if kind == b"x":
            pax = _pax_records(data)
            continue
        if kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if kind in (b"g", b"K"):  # global pax headers and GNU long link names: not needed
            continue
        name = pax.get("path") or long_name
        if name is None:
            name = buf[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if buf[257:263] == b"ustar\0" and buf[345] != 0:  # POSIX ustar name prefix
                name = buf[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape") + "/" + name
        pax, long_name = {}, None
        if kind in _REGULAR:
            yield name, data


def _split_name(name: str) -> tuple[str, str] | None:
    """`dir/abc.seg.png` -> (`dir/abc`, `seg.png`); None for names without an extension or for
    webdataset metadata entries such as `__index__`."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot <= slash + 1 or dot == len(name) - 1:
        return None
    if name.startswith("__") and name.split("/", 1)[0].endswith("__"):
        return None
    return name[:dot], name[dot + 1 :].lower()


def iter_shard(url: str, expected_samples: int | None = None) -> Iterator[dict[str, object]]:
    """Yield the raw samples of one shard, in tar order.

    Raises one of READ_ERRORS if the shard cannot be opened or is corrupt/truncated, after
    having yielded the complete samples before the fault; the sample being assembled at the
    fault is dropped (the reader cannot know whether more of its members would have followed).
    With `expected_samples` (from the manifest), another number of samples raises too.
    """
    stream = gopen(url, "rb")
    finished = False
    try:
        sample: dict[str, object] | None = None
        count = 0
        for name, data in tar_members(_open_tar_stream(stream)):
            parts = _split_name(name)
            if parts is None:
                continue
            key, ext = parts
            # a repeated extension starts a new sample, as in open_clip's lenient grouping
            if sample is None or key != sample["__key__"] or ext in sample:
                if sample is not None:
                    count += 1
                    yield sample
                sample = {"__key__": key, "__url__": url}
            sample[ext] = data
        if sample is not None:
            count += 1
            yield sample
        if expected_samples is not None and count != expected_samples:
            raise ShardReadError(f"has {count} samples, the manifest says {expected_samples}")
        finished = True
    finally:
        try:
            stream.close()  # for pipes this waits for the command and checks its exit status
        except READ_ERRORS:
            if finished:
                raise
