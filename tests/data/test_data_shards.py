"""Our streaming tar reader agrees with tarfile and is strict about damage."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import tarfile

import pytest

from corefm.data.shards import ShardReadError, _open_tar_stream, tar_members


def _archive(fmt: int) -> bytes:
    rng = random.Random(fmt)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for i in range(12):
            # long names exercise the ustar prefix field, pax path records and GNU long names
            name = "sub/" * rng.randint(0, 40) + f"key{i}.seg.png"
            if fmt != tarfile.USTAR_FORMAT and i % 3 == 0:
                name = "é" + name
            data = rng.randbytes(rng.randint(0, 1500))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "key0.seg.png"
        tar.addfile(link)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["ustar", "gnu", "pax"])
@pytest.mark.parametrize("compress", [None, gzip.compress, bz2.compress, lzma.compress], ids=["tar", "gz", "bz2", "xz"])
def test_reader_matches_tarfile(fmt, compress):
    raw = _archive(fmt)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]
    blob = compress(raw) if compress else raw
    assert list(tar_members(_open_tar_stream(io.BytesIO(blob)))) == expected


def test_garbled_header_and_missing_end_are_errors():
    raw = bytearray(_archive(tarfile.PAX_FORMAT))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        third = tar.getmembers()[3].offset
    garbled = bytes(raw[:third]) + b"\x07" * 512 + bytes(raw[third + 512 :])
    with pytest.raises(ShardReadError, match="bad header checksum"):
        list(tar_members(io.BytesIO(garbled)))
    with pytest.raises(ShardReadError, match="missing end-of-archive block"):
        list(tar_members(io.BytesIO(bytes(raw[:third]))))
    with pytest.raises(ShardReadError, match="empty file"):
        list(tar_members(io.BytesIO(b"")))


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_gnu_sparse_members_are_refused_with_their_name(tmp_path, fmt):
    import subprocess  # GNU tar (Debian's base system) writes the sparse members

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"first sample")
    with open(src / "b.bin", "wb") as f:  # a file with a hole: tar -S stores it as a sparse member
        f.seek(1 << 20)
        f.write(b"end")
    shard = tmp_path / "s.tar"
    subprocess.run(["tar", "-S", f"--format={fmt}", "-cf", str(shard), "-C", str(src), "a.txt", "b.bin"], check=True)
    members = []
    with open(shard, "rb") as f, pytest.raises(ShardReadError, match=r"tar member '(\./)?b\.bin' at byte \d+ is a GNU sparse"):
        for name, data in tar_members(f):
            members.append((name, data))
    assert members == [("a.txt", b"first sample")]  # what came before the sparse member is kept
