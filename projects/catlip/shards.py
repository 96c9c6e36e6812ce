"""Image-text shards -> CatLIP shards: each caption's WordNet synsets as multi-label targets.

    corefm catlip labels --in data/fmnist-it --out data/fmnist-catlip --min-count 20

``IN/train`` (and ``IN/val`` if present) are image-text shard sets (``corefm clip image-text``).
Synsets are counted over the train captions only; those named by at least ``--min-count``
captions form the vocabulary (sorted ids). Every kept sample is copied with all its members plus
``catlip.json``: ``{"synsets": [every synset of the caption], "labels": [vocabulary indices]}``.
A sample with no vocabulary synset carries no positive label and is dropped (counted); a sample
without a usable caption is skipped and listed in ``OUT/<split>/rejects.jsonl``.

The vocabulary travels in each output manifest (``producer.vocabulary``: ids, first lemmas,
train counts, ``min_count``), so a run, its checkpoints and the transfer tool read the same list.
``--vocabulary FILE`` labels with an existing vocabulary instead (e.g. new data for a trained model).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from corefm.data import DataError, ShardWriter, load_manifest
from corefm.data.shards import READ_ERRORS, iter_shard
from projects.catlip.labels import build_vocabulary, caption_synsets
from projects.catlip.wordnet import WordNet, default_wordnet

PRODUCER = "projects.catlip.shards"
LABEL_KEY = "catlip.json"
FORMAT_VERSION = "1"


@dataclass
class Vocabulary:
    """The label vocabulary: sorted synset ids, their first lemma, their train caption counts."""

    synsets: list[str]
    lemmas: list[str]
    counts: list[int]
    min_count: int
    captions: int  # train captions counted

    def index(self) -> dict[str, int]:
        return {s: k for k, s in enumerate(self.synsets)}

    def __len__(self) -> int:
        return len(self.synsets)


def read_vocabulary(path: str | os.PathLike) -> Vocabulary:
    """The vocabulary in a CatLIP shard set's manifest (a folder or its ``dataset.json``)."""
    manifest = load_manifest(path)
    vocab = manifest.producer.get("vocabulary")
    if manifest.producer.get("name") != PRODUCER or not isinstance(vocab, dict):
        raise DataError(f"{manifest.path} is not a CatLIP shard set (no vocabulary in its manifest); "
                        "write one with `corefm catlip labels`")
    try:
        out = Vocabulary(**vocab)
    except TypeError as err:
        raise DataError(f"{manifest.path}: bad vocabulary entry ({err})") from None
    if not (len(out.synsets) == len(out.lemmas) == len(out.counts)):
        raise DataError(f"{manifest.path}: vocabulary lists differ in length")
    return out


def _captions(shard_set: Path, rejects: list[dict[str, str]]) -> Iterator[tuple[dict[str, Any], str]]:
    """(raw sample, caption) of every sample with a usable UTF-8 ``txt``; the others go to ``rejects``."""
    manifest = load_manifest(shard_set)
    for shard in manifest.shards:
        try:
            for raw in iter_shard(os.path.join(manifest.dir, shard.name), shard.samples):
                try:
                    text = raw["txt"].decode("utf-8").strip() if "txt" in raw else ""
                except UnicodeDecodeError:
                    text = None
                if not text:
                    reason = "no caption" if text == "" else "caption is not UTF-8"
                    rejects.append({"shard": shard.name, "key": str(raw["__key__"]), "reason": reason})
                    continue
                yield raw, text
        except READ_ERRORS as err:
            raise DataError(f"{manifest.dir}/{shard.name}: unreadable shard ({err})") from None


def count_split(shard_set: Path, wn: WordNet) -> tuple[Counter[str], int]:
    """How many captions of the set name each synset, and how many captions were read."""
    counts: Counter[str] = Counter()
    n = 0
    for _, text in tqdm(_captions(shard_set, []), desc=f"count synsets {shard_set.name}", unit="caption"):
        counts.update(caption_synsets(text, wn))
        n += 1
    return counts, n


def make_vocabulary(counts: Counter[str], captions: int, min_count: int, wn: WordNet) -> Vocabulary:
    synsets = build_vocabulary(counts, min_count)
    if not synsets:
        raise DataError(f"no synset is named by {min_count}+ captions (of {captions}); lower --min-count")
    lemmas = [wn.synset(int(s[1:])).lemmas[0] for s in synsets]
    return Vocabulary(synsets, lemmas, [counts[s] for s in synsets], min_count, captions)


def label_split(in_set: Path, out_set: Path, split: str, vocab: Vocabulary, wn: WordNet,
                source: str) -> dict[str, int]:
    """Copy ``in_set`` to ``out_set`` with ``catlip.json`` targets; returns the split's counts."""
    manifest = load_manifest(in_set)
    index = vocab.index()
    rejects: list[dict[str, str]] = []
    stats = {"samples_in": 0, "samples_out": 0, "unlabelled": 0}
    producer = {"name": PRODUCER, "version": FORMAT_VERSION, "input": source, "vocabulary": asdict(vocab),
                **{k: v for k, v in manifest.producer.items() if k == "classes"}}
    with ShardWriter(out_set, prefix=split, num_shards=len(manifest.shards), producer=producer) as writer:
        for raw, text in tqdm(_captions(in_set, rejects), desc=f"label {split}", unit="img",
                              total=manifest.total_samples):
            stats["samples_in"] += 1
            synsets = caption_synsets(text, wn)
            labels = sorted(index[s] for s in synsets if s in index)
            if not labels:
                stats["unlabelled"] += 1
                continue
            sample = {k: v for k, v in raw.items() if k != "__url__"}
            sample[LABEL_KEY] = {"synsets": synsets, "labels": labels}
            writer.write(sample)
            stats["samples_out"] += 1
    stats["samples_in"] += len(rejects)
    stats["rejected"] = len(rejects)
    with open(out_set / "rejects.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rejects)
    return stats


def build(in_root: Path, out_root: Path, min_count: int, vocabulary: str = "",
          wn: WordNet | None = None) -> dict[str, Any]:
    """Label ``in_root/train`` (+ ``in_root/val``) into ``out_root``; returns the report (also written
    to ``out_root/catlip_report.json``)."""
    wn = wn or default_wordnet()
    if not wn.available():
        raise DataError(f"WordNet 3.0 files not found under {wn.root} (install Debian's wordnet-base)")
    splits = [s for s in ("train", "val") if (in_root / s / "dataset.json").is_file()]
    if not splits:
        raise DataError(f"{in_root} holds no train/ or val/ shard set (write one with `corefm clip image-text`)")
    if in_root.resolve() == out_root.resolve():
        raise DataError("--out must differ from --in (shards are rewritten, not edited in place)")
    if vocabulary:
        vocab = read_vocabulary(vocabulary)
    else:
        if "train" not in splits:
            raise DataError(f"{in_root}/train is missing: the vocabulary is counted on train captions "
                            "(or pass --vocabulary)")
        counts, n = count_split(in_root / "train", wn)
        vocab = make_vocabulary(counts, n, min_count, wn)
    report: dict[str, Any] = {"vocabulary": len(vocab), "min_count": vocab.min_count}
    for split in splits:
        report[split] = label_split(in_root / split, out_root / split, split, vocab, wn, str(in_root / split))
    top = sorted(range(len(vocab)), key=lambda k: -vocab.counts[k])[:10]
    report["most_common"] = [[vocab.lemmas[k], vocab.counts[k]] for k in top]
    (out_root / "catlip_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def print_report(report: dict[str, Any], out_root: Path) -> None:
    print(f"vocabulary: {report['vocabulary']} synsets named by {report['min_count']}+ train captions "
          f"(recipe: model.num_classes={report['vocabulary']})")
    print("  most common: " + ", ".join(f"{lemma} {n}" for lemma, n in report["most_common"]))
    for split in ("train", "val"):
        if split in report:
            s = report[split]
            print(f"{split}: {out_root / split}: {s['samples_out']:,} of {s['samples_in']:,} samples labelled; "
                  f"{s['unlabelled']:,} without a vocabulary synset dropped, {s['rejected']:,} without a usable "
                  "caption skipped (rejects.jsonl)")
