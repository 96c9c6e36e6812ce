"""Speech Commands v2 (Warden, arXiv 1804.03209) as the ByteFormer paper trains on it: 12-way keyword
spotting, shards of the archive's own WAV files.

The extracted archive (``speech_commands_v0.02.tar.gz``)::

    ROOT/<word>/<speaker>_nohash_<n>.wav   16 kHz mono 16-bit PCM, 1 s or shorter; 35 words
    ROOT/validation_list.txt               held-out clips, one relative path a line
    ROOT/testing_list.txt
    ROOT/_background_noise_/*.wav          long noise recordings

Classes, in this order: the ten commands (yes no up down left right on off stop go), ``unknown``
(every other word) and ``silence`` (1-second crops of the background recordings). The splits are the
archive's lists (clips in neither list train); silence crops are split by position inside each
recording (the first 80% train, then 10% validation, 10% test), so no audio is shared between splits.
Every other word is kept whole as ``unknown``: no rebalancing (the archive's separate 12-way test
set rebalances; this tool reads the main archive). Each sample stores the file's own ``wav`` bytes,
``cls``, ``txt`` (the word) and ``json`` (path, speaker, word).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from tqdm import tqdm

from corefm.data import DataError, ShardWriter

COMMANDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
CLASSES = COMMANDS + ["unknown", "silence"]
SAMPLE_RATE = 16000
NOISE = "_background_noise_"
SILENCE_SPLITS = (("train", 0.0, 0.8), ("val", 0.8, 0.9), ("test", 0.9, 1.0))


def _listed(root: Path, name: str) -> set[str]:
    path = root / name
    if not path.is_file():
        raise DataError(f"{path} not found: is {root} the extracted speech_commands_v0.02 archive?")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _silence(root: Path) -> dict[str, list[dict]]:
    """1-second crops of each background recording, split by position in the recording."""
    import soundfile as sf

    out: dict[str, list[dict]] = {split: [] for split, _, _ in SILENCE_SPLITS}
    for path in sorted((root / NOISE).glob("*.wav")):
        x, rate = sf.read(str(path), dtype="int16")
        if rate != SAMPLE_RATE or x.ndim != 1:
            raise DataError(f"{path}: expected 16 kHz mono, got {rate} Hz and {x.ndim} channel(s)")
        for split, lo, hi in SILENCE_SPLITS:
            start, stop = int(lo * len(x)), int(hi * len(x))
            for i, at in enumerate(range(start, stop - SAMPLE_RATE + 1, SAMPLE_RATE)):
                buf = io.BytesIO()
                sf.write(buf, x[at: at + SAMPLE_RATE], SAMPLE_RATE, format="WAV", subtype="PCM_16")
                out[split].append({"wav": buf.getvalue(), "cls": CLASSES.index("silence"), "txt": "silence",
                                   "json": {"path": f"{NOISE}/{path.name}", "offset": at, "word": "silence"}})
    return out


def build(root: Path, out: Path, shards: dict[str, int] | None = None) -> dict[str, Path]:
    """Write ``out/train``, ``out/val`` and ``out/test`` from the extracted archive at ``root``."""
    root, shards = Path(root), shards or {"train": 64, "val": 8, "test": 8}
    val, test = _listed(root, "validation_list.txt"), _listed(root, "testing_list.txt")
    clips = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.wav") if p.parent.name != NOISE)
    if not clips:
        raise DataError(f"no <word>/*.wav clips under {root}")
    splits: dict[str, list[dict]] = _silence(root)
    if not any(splits.values()):
        raise DataError(f"no background recordings of at least 1 s in {root / NOISE}: no silence class")
    for rel in tqdm(clips, desc="speech commands", unit="clip"):
        word = rel.split("/")[0]
        split = "val" if rel in val else "test" if rel in test else "train"
        splits[split].append({"wav": (root / rel).read_bytes(),
                              "cls": COMMANDS.index(word) if word in COMMANDS else CLASSES.index("unknown"),
                              "txt": word, "json": {"path": rel, "speaker": rel.split("/")[1].split("_")[0],
                                                    "word": word}})
    producer = {"name": "projects.byteformer.speech_commands", "source": "speech-commands-v2", "classes": CLASSES,
                "args": {"root": str(root), "sample_rate": SAMPLE_RATE}}
    written = {}
    for split, samples in splits.items():
        n = min(shards[split], len(samples))
        if n < 1:
            raise DataError(f"the {split} split of {root} is empty")
        order = np.random.default_rng(len(samples)).permutation(len(samples))  # mix words across shards
        with ShardWriter(out / split, prefix=split, num_shards=n, producer=producer) as w:
            for i, j in enumerate(order):
                w.write({"__key__": f"{split}-{i:07d}", **samples[j]})
        written[split] = out / split
    return written
