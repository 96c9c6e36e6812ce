"""``corefm catlip labels|transfer|eval``: caption synsets into shards; transfer and eval of a trained run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "CatLIP: WordNet synset labels from captions, and transfer of a trained image tower"


def add_cli(sub) -> None:
    """``corefm catlip labels|transfer|eval`` (``sub``: the ``corefm catlip`` command table)."""
    p = sub.add_parser(
        "labels", help="image-text shards -> CatLIP shards with WordNet synset targets",
        description="Count the synsets of IN/train's captions, keep those named by --min-count+ captions as the "
                    "vocabulary, and write OUT/train (and OUT/val) with catlip.json targets per sample and the "
                    "vocabulary in each manifest.")
    p.add_argument("--in", dest="in_dir", required=True, help="folder with train/ (and val/) image-text shard sets")
    p.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    p.add_argument("--min-count", type=int, default=5, help="captions that must name a synset for it to be a label")
    p.add_argument("--vocabulary", default="", help="use the vocabulary of this CatLIP shard set instead of counting")
    p.set_defaults(func=_labels)

    q = sub.add_parser(
        "transfer", help="synset rows as a class head, and linear probes, on frozen features of a run",
        description="Accuracy on --data's cls labels of: the head built from the vocabulary rows of the class names "
                    "(no training), a linear probe from zeros, and the same probe from the synset rows, both trained "
                    "on --train. A clip run gets the probe only.")
    q.add_argument("run", help="corefm catlip (or clip) run folder")
    q.add_argument("--train", required=True, help="shard set with cls labels to fit the probes on")
    q.add_argument("--data", required=True, help="held-out shard set with cls labels")
    q.add_argument("--classes", default="", help="comma-separated class names (default: --data's dataset.json)")
    q.add_argument("--probe-samples", type=int, default=2000, help="training images for the probes")
    q.add_argument("--epochs", type=int, default=20)
    q.add_argument("--max-samples", type=int, default=0, help="evaluate at most this many --data samples")
    q.add_argument("--json", default="", help="also write the metrics to this file")
    q.set_defaults(func=_transfer)

    e = sub.add_parser(
        "eval", help="synset prediction on held-out CatLIP shards: a catlip run's classifier or a clip run's zero-shot",
        description="Top-1 precision, recall@5 and mAP of the vocabulary synsets of each --data image, beside the "
                    "top-1 precision of always answering the commonest synset. A clip run scores the synsets' "
                    "lemmas in --templates with its text tower (zero-shot).")
    e.add_argument("run", help="corefm catlip or clip run folder")
    e.add_argument("--data", required=True, help="CatLIP shard set (corefm catlip labels) to score")
    e.add_argument("--templates", default="a drawing of a {}.,a photo of a {}.",
                   help="comma-separated prompt templates for a clip run")
    e.add_argument("--json", default="", help="also write the metrics to this file")
    e.set_defaults(func=_eval)


def _labels(args: argparse.Namespace) -> int:
    from projects.catlip.shards import build, print_report

    if args.min_count < 1:
        from corefm.errors import ConfigError

        raise ConfigError(f"--min-count must be >= 1, got {args.min_count}")
    out = Path(args.out)
    print_report(build(Path(args.in_dir), out, args.min_count, args.vocabulary), out)
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from corefm.errors import ConfigError
    from projects.catlip.transfer import transfer_report
    from corefm.data import manifest_classes

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] or manifest_classes(args.data)
    if not classes:
        raise ConfigError("no class names: pass --classes or use shards whose dataset.json lists them")
    _print(transfer_report(Path(args.run), args.train, args.data, classes, args.probe_samples, args.epochs,
                           args.max_samples), args.json)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from projects.catlip.evaluate import evaluate

    _print(evaluate(Path(args.run), args.data, args.templates), args.json)
    return 0


def _print(metrics: dict[str, float], json_path: str) -> None:
    text = json.dumps({k: round(v, 4) for k, v in metrics.items()}, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
