"""``corefm sam-clip teacher-outputs|export-sam|eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


HELP = "SAM-CLIP: stored teacher outputs, SAM export, zero-shot and segmentation eval"


def add_cli(sub) -> None:
    """``corefm sam-clip teacher-outputs|export-sam|eval`` (``sub``: the ``corefm sam-clip`` table)."""
    add_teacher_outputs(sub)
    add_export_sam(sub)
    add_eval(sub)


def add_teacher_outputs(sub) -> None:
    p = sub.add_parser(
        "teacher-outputs", help="store SAM-CLIP teacher outputs (CLIP embeddings, SAM masks + prompts) in shards",
        description="Copy a shard set adding clip_emb.npy (open_clip teacher) and/or sam_prompts.json + "
                    "sam_masks.npy (SAM teacher on prompts drawn from --mask-key), with the teachers' versions "
                    "in json.teachers and dataset.json; training refuses shards from another teacher version.")
    p.add_argument("--in", dest="in_dir", required=True, help="input shard set folder (dataset.json)")
    p.add_argument("--out", required=True, help="output shard set folder")
    p.add_argument("--clip", default="", help="CLIP teacher: open_clip folder, hf-hub:org/name or NAME@CHECKPOINT")
    p.add_argument("--sam", default="", help="SAM teacher checkpoint (segment_anything .pth)")
    p.add_argument("--sam-config", default="",
                   help="SAM preset (vit_b, tiny) or JSON; default sam_config.json beside --sam")
    p.add_argument("--prompts", type=int, default=1, help="K point prompts and K box prompts per image")
    p.add_argument("--mask-key", default="seg.png", help="mask the SAM prompts are drawn from")
    p.add_argument("--shards", default="", help="START:END range of input shard indices (default all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--samples-per-shard", type=int, default=0,
                   help="default: as the input; keep it well below data.shuffle_buffer so rehearsal batches mix")
    p.set_defaults(func=_teacher_outputs)


def _teacher_outputs(args: argparse.Namespace) -> int:
    from projects.sam_clip.teacher_outputs import run

    report = run(Path(args.in_dir), Path(args.out), clip=args.clip, sam=args.sam, sam_config=args.sam_config,
                 prompts=args.prompts, mask_key=args.mask_key, shards=args.shards, batch_size=args.batch_size,
                 samples_per_shard=args.samples_per_shard)
    print(json.dumps(report, indent=2))
    return 0


def add_export_sam(sub) -> None:
    p = sub.add_parser("export-sam", help="write a sam_clip run's SAM part as a segment_anything .pth",
                            description="OUT gets SAM's state dict (image_encoder/prompt_encoder/mask_decoder) and "
                                        "sam_config.json beside it: a SAM teacher for teacher-outputs and recipes.")
    p.add_argument("run_dir", help="finished sam_clip run (recipe.json + model.safetensors)")
    p.add_argument("out", help="output .pth file")
    p.set_defaults(func=_export_sam)


def _export_sam(args: argparse.Namespace) -> int:
    from corefm.errors import ConfigError
    from corefm.train.evaluate import load_run
    from projects.sam_clip.teachers import save_sam_checkpoint

    recipe, task = load_run(Path(args.run_dir))
    if recipe.model_name != "sam_clip":
        raise ConfigError(f"{args.run_dir} is a {recipe.model_name} run, not a sam_clip run")
    out = save_sam_checkpoint(task.model.sam_state_dict(), task.model.cfg, Path(args.out))
    print(f"wrote {out} and {out.parent / 'sam_config.json'}")
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="zero-shot top-1, promptable-seg mIoU and zero-shot semantic-seg mIoU of a SAM-CLIP model",
        description="Evaluate a sam_clip run or release folder on held-out shards: zero-shot classification through "
                    "the CLIP head (class embeddings from the CLIP teacher's text tower), point/box promptable "
                    "segmentation mIoU against ground truth (--mask-key) and against the SAM teacher's masks, and "
                    "zero-shot semantic segmentation from per-patch CLIP-head features; --teachers adds the "
                    "teachers' own numbers.")
    p.add_argument("model", help="sam_clip run folder or release folder")
    p.add_argument("--data", required=True, help="held-out shard set")
    p.add_argument("--clip-teacher", default="", help="default: the run's task.clip_teacher")
    p.add_argument("--sam-teacher", default="", help="default: the run's task.sam_teacher")
    p.add_argument("--classes", default="", help="comma-separated class names (default: the run's / dataset.json's)")
    p.add_argument("--templates", default="simple")
    p.add_argument("--teachers", action="store_true", help="also evaluate the two teachers on the same samples")
    p.add_argument("--max-samples", type=int, default=0)
    p.add_argument("--json", default="", help="also write the metrics to this file")
    p.add_argument("--save-examples", type=int, default=0, metavar="N",
                   help="draw N held-out examples: the prompts on the image with the teacher's and the student's "
                        "masks (sam_clip_prompts.png), and the zero-shot segmentation map with a class legend "
                        "(sam_clip_semseg.png)")
    p.add_argument("--examples-dir", default="", help="where the example PNGs go (default: MODEL/examples)")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from projects.sam_clip.evaluate import run_eval

    from corefm.errors import ConfigError

    if args.save_examples < 0:
        raise ConfigError(f"--save-examples {args.save_examples}: a number of examples, 0 for none")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    metrics = run_eval(Path(args.model), args.data, clip_teacher=args.clip_teacher, sam_teacher=args.sam_teacher,
                       classes=classes, templates=args.templates, teachers=args.teachers,
                       max_samples=args.max_samples, save_examples=args.save_examples,
                       examples_dir=Path(args.examples_dir) if args.examples_dir else None)
    text = json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0
