"""``corefm byteformer predict`` (classify files by their bytes), ``speech-digits`` and ``speech-commands``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


HELP = "ByteFormer: classify files by their raw bytes, spoken-digit shards"


def add_cli(sub) -> None:
    """``corefm byteformer predict|speech-digits|speech-commands`` (``sub``: the ``corefm byteformer`` table)."""
    add_predict(sub)
    add_speech_digits(sub)
    add_speech_commands(sub)


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify image/audio files by their raw bytes (ByteFormer)",
                            description="Load a ByteFormer run or release folder and classify each FILE. "
                                        "A file that cannot be classified (missing, unreadable, empty, longer "
                                        "than the model's maximum) gets one 'corefm: error:' line; the others "
                                        "are still classified. Exit code 2 if any file failed.")
    p.add_argument("model", help="run folder (model.safetensors + recipe.json) or release folder")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--top", type=int, default=1, help="print the K most likely classes (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON object per file instead of text")
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    from projects.byteformer.predict import PredictError, Predictor

    predictor = Predictor(Path(args.model))
    failed = 0
    for name in args.files:
        try:
            (pred,) = predictor.predict([Path(name)], top=max(1, args.top))
        except PredictError as e:
            print(f"corefm: error: {e}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps({"file": pred.path, "top": [{"class": c, "prob": round(p, 4)} for c, p in pred.top]}))
        else:
            print(f"{pred.path}: " + ", ".join(f"{c} ({p:.3f})" for c, p in pred.top))
    return 2 if failed else 0


def add_speech_digits(sub) -> None:
    p = sub.add_parser(
        "speech-digits", help="spoken-digit keyword-spotting shards (Asterisk voice + espeak-ng speakers)",
        description="Write OUT/train and OUT/val: 8 kHz 16-bit WAV clips of 'zero'..'nine' from Debian's "
                    "asterisk-core-sounds-en-wav (one human speaker, training split) and espeak-ng voices x "
                    "variants as speakers, at several pitches and speeds; validation speakers are disjoint "
                    "from training speakers.")
    p.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    p.add_argument("--speakers", type=int, default=48, help="espeak-ng speakers (voice+variant pairs)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of espeak-ng speakers held out")
    p.add_argument("--pitches", default="35,50,65", help="comma-separated espeak-ng pitches (0-99)")
    p.add_argument("--speeds", default="140,175", help="comma-separated espeak-ng speeds (words/min)")
    p.add_argument("--no-asterisk", action="store_true", help="leave out the Asterisk recordings")
    p.add_argument("--train-shards", type=int, default=8)
    p.add_argument("--val-shards", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_speech_digits)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    from corefm.data import DataError

    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise DataError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _speech_digits(args: argparse.Namespace) -> int:
    from projects.byteformer.speech import build

    paths = build(Path(args.out), args.speakers, args.val_fraction, _ints(args.pitches, "--pitches"),
                  _ints(args.speeds, "--speeds"), not args.no_asterisk, args.train_shards, args.val_shards,
                  args.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def add_speech_commands(sub) -> None:
    p = sub.add_parser(
        "speech-commands", help="Speech Commands v2 shards for the paper's 12-way task (from the extracted archive)",
        description="Write OUT/train, OUT/val and OUT/test from the extracted speech_commands_v0.02 archive: the "
                    "archive's WAV files under 12 classes (10 commands, unknown, silence from the background "
                    "noise), split by its validation_list.txt and testing_list.txt.")
    p.add_argument("--root", required=True, help="the extracted archive (word folders, the two lists, _background_noise_)")
    p.add_argument("--out", required=True, help="output folder (gets train/, val/ and test/)")
    p.add_argument("--train-shards", type=int, default=64)
    p.add_argument("--val-shards", type=int, default=8)
    p.add_argument("--test-shards", type=int, default=8)
    p.set_defaults(func=_speech_commands)


def _speech_commands(args: argparse.Namespace) -> int:
    from projects.byteformer.speech_commands import build

    shards = {"train": args.train_shards, "val": args.val_shards, "test": args.test_shards}
    for split, path in build(Path(args.root), Path(args.out), shards).items():
        print(f"{split}: {path}")
    return 0
