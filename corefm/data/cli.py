"""``corefm data ...``: build, inspect and verify shard sets."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_cli(sub) -> None:
    """Add ``corefm data images|inspect|verify`` (image-classification shard sets, any shard set's
    manifest); project data tools live under ``corefm <project>``."""
    p = sub.add_parser("data", help="build, inspect and verify webdataset shard sets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    img = dsub.add_parser("images", help="image-classification shards from digits, fashion-mnist or a folder")
    img.add_argument("--source", default="digits", help="digits | fashion-mnist | folder:PATH (default digits)")
    img.add_argument("--out", required=True, help="output folder (gets train/ and val/ shard sets)")
    img.add_argument("--train-shards", type=int, default=8)
    img.add_argument("--val-shards", type=int, default=4)
    img.set_defaults(func=_images)

    ins = dsub.add_parser("inspect", help="summarise a shard set's dataset.json, or one shard's samples")
    ins.add_argument("path", help="folder with dataset.json, or one .tar shard")
    ins.set_defaults(func=_inspect)

    ver = dsub.add_parser("verify", help="check every shard's size and sha256 against dataset.json")
    ver.add_argument("path", help="folder with dataset.json")
    ver.set_defaults(func=_verify)


def _images(args: argparse.Namespace) -> int:
    from corefm.data.image_sets import build

    for split, path in build(args.source, Path(args.out), args.train_shards, args.val_shards).items():
        print(f"{split}: {path}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from corefm.data import load_manifest

    if Path(args.path).is_file() and Path(args.path).name != "dataset.json":
        return _inspect_shard(Path(args.path))
    m = load_manifest(Path(args.path))
    print(f"{args.path}: {len(m.shards)} shards, {m.total_samples:,} samples, keys {', '.join(m.keys)}")
    print(f"producer: {m.producer}")
    for s in m.shards[:5]:
        print(f"  {s.name}: {s.samples} samples, {s.bytes:,} bytes")
    if len(m.shards) > 5:
        print(f"  ... {len(m.shards) - 5} more")
    return 0


def _inspect_shard(path: Path) -> int:
    """One shard read to its end: samples, keys, the first sample's members and sizes."""
    from corefm.data.errors import DataError, one_line
    from corefm.data.shards import READ_ERRORS, iter_shard

    count, keys, first = 0, set(), None
    try:
        for sample in iter_shard(str(path)):
            count += 1
            keys |= {k for k in sample if not k.startswith("__")}
            first = first or sample
    except READ_ERRORS as e:
        raise DataError(f"{path}: unreadable after {count} samples ({type(e).__name__}: {one_line(e)})") from None
    print(f"{path}: {count:,} samples, keys {', '.join(sorted(keys)) or '(none)'}")
    if first is not None:
        print(f"first sample {first['__key__']}: " + ", ".join(
            f"{k} ({len(v):,} bytes)" for k, v in first.items() if not k.startswith("__")))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from corefm.data.manifest import verify

    verify(Path(args.path))
    print(f"{args.path}: all shards match dataset.json")
    return 0
