"""``corefm data ...``: build, inspect and verify shard sets."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_cli(sub) -> None:
    """Add ``corefm data images|inspect|reinforce|verify`` (image-classification shard sets, any shard set's
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

    rf = dsub.add_parser(
        "reinforce", help="store a teacher's top-k logits under N recorded augmentations beside every image",
        description="Copy every shard of IN to OUT adding, per sample, N augmentations (crop box, flip, digest of "
                    "the view) and the teacher's top-k logits for each view (dataset reinforcement). Resumable: "
                    "finished shards are skipped. The teacher is a corefm classification run folder or an open_clip "
                    "folder (zero-shot over the class names).")
    rf.add_argument("--in", dest="in_dir", required=True, help="shard set folder (with dataset.json)")
    rf.add_argument("--out", required=True, help="output shard set folder")
    rf.add_argument("--teacher", required=True, help="corefm run folder or open_clip folder")
    rf.add_argument("--augs", type=int, default=4, help="augmentations stored per image")
    rf.add_argument("--topk", type=int, default=5, help="teacher logits stored per augmentation")
    rf.add_argument("--classes", default="", help="comma-separated class names for an open_clip teacher "
                                                  "(default: --in's dataset.json)")
    rf.add_argument("--weights", default="raw", choices=["raw", "ema"], help="a run teacher's weights")
    rf.add_argument("--scale", default="0.35,1.0", help="crop area fraction range")
    rf.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    rf.add_argument("--seed", type=int, default=0)
    rf.add_argument("--batch", type=int, default=256, help="views per teacher forward")
    rf.set_defaults(func=_reinforce)

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


def _reinforce(args: argparse.Namespace) -> int:
    from corefm.augment.replay import AugmentSpec
    from corefm.data import DataError, manifest_classes
    from corefm.data.reinforce import reinforce
    from corefm.eval.teachers import load_teacher

    try:
        scale = [float(v) for v in args.scale.split(",")]
    except ValueError:
        scale = []
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise DataError(f"--scale must be two fractions LOW,HIGH with 0 < LOW <= HIGH <= 1, got {args.scale!r}")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] or manifest_classes(args.in_dir)
    teacher = load_teacher(args.teacher, classes, args.weights)
    spec = AugmentSpec(scale=scale, hflip=not args.no_flip)
    report = reinforce(Path(args.in_dir), Path(args.out), teacher, args.augs, args.topk, args.seed, spec, args.batch)
    print(f"{args.out}: {report['samples']:,} samples x {report['augs']} views, teacher top-{report['topk']} "
          f"({report['shards']} shards, {report['resumed']} already done; {report['rejected']} without a usable "
          "image skipped, listed in rejects.jsonl)")
    return 0
