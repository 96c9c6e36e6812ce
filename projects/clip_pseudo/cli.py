"""``corefm clip image-text|pseudo-label|eval``: image-text shards, pseudo-label experts, evaluation."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path


HELP = "CLIP + pseudo-labels: image-text shards, pseudo-label experts, zero-shot/retrieval/probe eval"


def add_cli(sub) -> None:
    """``corefm clip image-text|pseudo-label|eval`` (``sub``: the ``corefm clip`` command table)."""
    add_data_commands(sub)
    add_clip_eval(sub)


def add_data_commands(sub) -> None:
    p = sub.add_parser(
        "image-text", help="image-text shards from fashion-mnist, a folder, or a CSV/TSV/JSONL of (image, caption)",
        description="Write OUT/train and OUT/val image-text shard sets. Unusable rows (unreadable or undecodable "
                    "image, missing/empty/non-text caption) are skipped, counted and listed in OUT/rejects.jsonl.")
    p.add_argument("--source", required=True, help="fashion-mnist | folder:PATH | csv:FILE | tsv:FILE | jsonl:FILE")
    p.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--val-fraction", type=float, default=0.05, help="folder/table rows held out (by key hash)")
    p.add_argument("--caption-template", default="", help='folder source without sidecar .txt: e.g. "a photo of a {}"')
    p.add_argument("--image-column", default="", help="table column with the image path or URL")
    p.add_argument("--caption-column", default="", help="table column with the caption")
    p.add_argument("--max-size", type=int, default=0, help="downscale images whose longer side exceeds this")
    p.add_argument("--workers", type=int, default=8, help="threads reading/downloading/decoding images")
    p.add_argument("--limit", type=int, default=0, help="at most this many samples (per split for fashion-mnist)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_image_text)

    q = sub.add_parser(
        "pseudo-label", help="run pseudo-label experts over a shard set into a new shard set",
        description="Copy every shard of IN to OUT adding one label key per expert and its name and version in "
                    "json.pseudo_labels. Resumable (finished shards are skipped), parallel over shards.")
    q.add_argument("--in", dest="in_dir", required=True, help="shard set folder (with dataset.json)")
    q.add_argument("--out", required=True, help="output shard set folder")
    q.add_argument("--experts", required=True,
                   help="comma-separated: otsu-seg, canny[:LOW-HIGH], haar-face, haar:CASCADE, hf-seg:PATH_OR_ID, "
                        "hf-depth:PATH_OR_ID, import:PKG.MODULE.CLASS")
    q.add_argument("--workers", type=int, default=1, help="processes, one shard each at a time")
    q.set_defaults(func=_pseudo_label)


def _image_text(args: argparse.Namespace) -> int:
    from projects.clip_pseudo.data.image_text import build

    report = build(args.source, Path(args.out), samples_per_shard=args.samples_per_shard,
                   val_fraction=args.val_fraction, caption_template=args.caption_template,
                   image_column=args.image_column, caption_column=args.caption_column, max_size=args.max_size,
                   workers=args.workers, limit=args.limit, seed=args.seed)
    for split in ("train", "val"):
        if report.get(split):
            print(f"{split}: {Path(args.out) / split} ({report[split]:,} samples)")
    if report["rejected"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in report["reasons"].items())
        print(f"skipped {report['rejected']} rows ({reasons}); listed in {Path(args.out) / 'rejects.jsonl'}")
    return 0


def _pseudo_label(args: argparse.Namespace) -> int:
    from projects.clip_pseudo.data.pseudo_label import print_report, run

    out = Path(args.out)
    print_report(run(Path(args.in_dir), out, args.experts, args.workers), out)
    return 0


def add_clip_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="zero-shot accuracy, retrieval R@1/5/10 and dense probes of a CLIP run or open_clip folder",
        description="Embed --data once; report zero-shot top-1/top-5 on its cls labels (open_clip's classifier "
                    "builder and templates), image<->text recall@1/5/10, and linear dense probes on frozen patch "
                    "tokens trained on --probe-train and scored on --data.")
    p.add_argument("model", help="corefm clip run folder or open_clip folder (release)")
    p.add_argument("--data", required=True, help="held-out shard set")
    p.add_argument("--classes", default="", help="comma-separated class names (default: the run's / dataset.json's)")
    p.add_argument("--templates", default="simple", help="simple | openai (open_clip's ImageNet template sets)")
    p.add_argument("--probe", default="", help="comma-separated probes: seg, semantic, edges, depth, normals")
    p.add_argument("--probe-train", default="", help="shard set the probes are trained on")
    p.add_argument("--probe-samples", type=int, default=4000, help="training images for the probes")
    p.add_argument("--probe-epochs", type=int, default=30)
    p.add_argument("--probe-up", type=int, default=1,
                   help="each patch token linearly predicts an UP x UP pixel block (1 = per-patch logits)")
    p.add_argument("--max-samples", type=int, default=0, help="evaluate at most this many --data samples")
    p.add_argument("--json", default="", help="also write the metrics to this file")
    p.add_argument("--save-examples", type=int, default=0, metavar="N",
                   help="draw the first N --data images per dense head (the model's heads and the --probe probes): "
                        "image, expert pseudo-label, prediction; one PNG per head")
    p.add_argument("--examples-dir", default="", help="where the example PNGs go (default: MODEL/examples)")
    p.set_defaults(func=_clip_eval)


def _clip_eval(args: argparse.Namespace) -> int:
    from corefm.errors import ConfigError
    from projects.clip_pseudo.evaluate import extract, load_model, run_probes, zero_shot
    from projects.clip_pseudo.probe import PRESETS
    from projects.clip_pseudo.retrieval import retrieval_recall
    from corefm.data import manifest_classes

    loaded = load_model(Path(args.model))
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] or loaded.class_names \
        or manifest_classes(args.data)
    probes = []
    for name in (n.strip() for n in args.probe.split(",") if n.strip()):
        if name not in PRESETS:
            raise ConfigError(f"unknown probe {name!r} (known: {', '.join(PRESETS)})")
        spec = replace(PRESETS[name], up=args.probe_up)
        probes.append(replace(spec, channels=len(classes) + 1) if name == "semantic" else spec)
    if probes:
        from projects.clip_pseudo.config import require_vit_tower

        require_vit_tower(loaded.model.cfg, "dense probes (--probe)")  # before any features are extracted
    if probes and not args.probe_train:
        raise ConfigError("--probe needs --probe-train (the shard set the linear probes are fitted on)")
    if any(p.name == "semantic" for p in probes) and not classes:
        raise ConfigError("the semantic probe needs class names (--classes or a dataset.json with classes)")
    if args.save_examples < 0:
        raise ConfigError(f"--save-examples {args.save_examples}: a number of images, 0 for none")
    if args.save_examples and not probes and not getattr(loaded.model, "head_specs", None):
        raise ConfigError(f"--save-examples: {args.model} has no dense heads (task.heads) and no --probe is fitted: "
                          "there is no dense prediction to draw")
    examples_dir = Path(args.examples_dir) if args.examples_dir else Path(args.model) / "examples"
    test = extract(loaded, args.data, probes, args.max_samples, tokens=bool(probes))
    metrics = {"samples": len(test["caption"]), **retrieval_recall(test["image"], test["text"], test["caption"])}
    if classes:
        metrics.update(zero_shot(loaded, test, classes, args.templates))
    fitted: dict = {}
    if probes:
        train = extract(loaded, args.probe_train, probes, args.probe_samples)
        metrics.update(run_probes(loaded, probes, train, test, args.probe_epochs, fitted))
    if args.save_examples:
        import sys

        from projects.clip_pseudo.examples import save_examples

        for path in save_examples(loaded, args.data, args.save_examples, examples_dir, fitted, probes, classes,
                                  title=Path(args.model).name):
            print(f"wrote {path}", file=sys.stderr)
    text = json.dumps({k: round(v, 4) for k, v in metrics.items()}, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0
