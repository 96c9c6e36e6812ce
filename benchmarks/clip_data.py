"""CLIP + pseudo-label input pipeline: corefm's loader vs open_clip's webdataset pipeline.

Both read the same pseudo-labelled shards (default: a small Fashion-MNIST set built here with the
otsu-seg and canny experts) and run the same per-sample work, the ``clip`` task's transform
(image decode + preprocess, open_clip tokenizer, seg.png/edges.png decoding and masks), with the
same workers and batch size; the open_clip side composes the stages of
``open_clip_train.data.get_wds_dataset`` (shard list, split by node/worker, tarfile_to_samples,
shuffle, map, batched, WebLoader). Runs alternate; best of ``--repeats`` as samples/s and samples
per CPU-second (main + worker processes). JSON goes to benchmarks/results/clip_data.json.

    python benchmarks/clip_data.py [--shards DIR] [--workers 2] [--batch-size 64] [--batches 40]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run as a script
sys.path.insert(0, HERE)

from data_pipeline import measure  # noqa: E402

from corefm.data import DataConfig, build_loader, expand_urls  # noqa: E402

RESULTS = os.path.join(HERE, "results", "clip_data.json")
RECIPE = os.path.join(os.path.dirname(HERE), "projects/clip_pseudo/configs/fashion_tiny.yaml")


def make_shards(out: Path, limit: int) -> str:
    from projects.clip_pseudo.data.image_text import build
    from projects.clip_pseudo.data.pseudo_label import run

    build("fashion-mnist", out / "it", samples_per_shard=max(1, limit // 8), limit=limit)
    run(out / "it" / "train", out / "pl", "otsu-seg,canny", workers=1)
    return str(out / "pl")


def make_task():
    from corefm.train.build import build_task
    from corefm.train.config import load_recipe

    return build_task(load_recipe(RECIPE))


def corefm_loader(urls: list[str], args, transform, collate) -> Iterator[Any]:
    cfg = DataConfig(num_workers=args.workers, seed=0, shuffle_buffer=1000)
    return iter(build_loader(urls, cfg, rank=0, world_size=1, batch_size=args.batch_size, map_fn=transform,
                             collate_fn=collate))


def openclip_loader(urls: list[str], args, transform, collate) -> Iterator[Any]:
    import webdataset as wds

    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls), wds.detshuffle(bufsize=2000, initial=500, seed=0, epoch=0), wds.split_by_node,
        wds.split_by_worker, wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(bufsize=1000, initial=500), wds.map(transform, handler=wds.warn_and_continue),
        wds.batched(args.batch_size, partial=False, collation_fn=collate),
    ).with_epoch(math.ceil(args.samples / args.batch_size / max(1, args.workers)))
    return iter(wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=args.workers,
                              persistent_workers=args.workers > 0))


def _counter(batch_size: int) -> Callable[[dict[str, Any]], int]:
    def count(batch: dict[str, Any]) -> int:
        assert batch["image"].shape[0] == batch_size and "label_seg" in batch
        return batch_size
    return count


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="pseudo-labelled shard set (dataset.json); default: build 8 x 500 here")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=RESULTS)
    args = parser.parse_args(argv)
    tmp = None
    if args.shards is None:
        tmp = tempfile.TemporaryDirectory(prefix="corefm-clip-bench-")
        args.shards = make_shards(Path(tmp.name), 4000)
    urls = expand_urls(args.shards)
    from corefm.data import load_manifest

    args.samples = load_manifest(args.shards).total_samples
    task = make_task()
    transform, collate = task.sample_transform(True), task.collate
    pipelines = {"corefm build_loader": lambda: corefm_loader(urls, args, transform, collate),
                 "open_clip webdataset": lambda: openclip_loader(urls, args, transform, collate)}
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in pipelines}
    for _ in range(args.repeats):
        for name, make in pipelines.items():
            runs[name].append(measure(make, args, _counter(args.batch_size)))
    best = {k: (max(r[0] for r in v), max(r[1] for r in v)) for k, v in runs.items()}
    ref = best["open_clip webdataset"]
    print(f"\n{len(urls)} shards, {args.workers} workers, batch {args.batch_size}, clip task transform with "
          f"seg + edges labels, {args.batches} timed batches after {args.warmup}, best of {args.repeats}\n")
    print("| pipeline | samples/s | ratio | samples per CPU-s | ratio |\n|---|---:|---:|---:|---:|")
    for name, (wall, cpu) in best.items():
        print(f"| {name} | {wall:,.0f} | {wall / ref[0]:.2f}x | {cpu:,.0f} | {cpu / ref[1]:.2f}x |")
    out = {"settings": {k: v for k, v in vars(args).items() if k not in ("json", "shards")},
           "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
           "load_average_1m": os.getloadavg()[0], "runs": runs, "best": best,
           "ratio_vs_open_clip": best["corefm build_loader"][0] / ref[0],
           "cpu_ratio_vs_open_clip": best["corefm build_loader"][1] / ref[1]}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nwrote {args.json}")
    from benchmarks._chart import write_chart  # the picture beside the JSON

    write_chart("clip_data", out, args.json)
    if tmp is not None:
        tmp.cleanup()
    return out


if __name__ == "__main__":
    main()
