"""Data-pipeline throughput: corefm's loader vs an open_clip-style webdataset pipeline.

Both read the same local image-text shards with the same worker count, batch size and
per-sample work (JPEG -> RGB PIL -> Resize(64)/CenterCrop/ToTensor/Normalize, caption -> 32 byte
tokens), and collate in the workers. The open_clip-style pipeline uses webdataset stages the way
open_clip_train.data.get_wds_dataset composes them (SimpleShardList + detshuffle or
ResampledShards, split_by_node, split_by_worker, tarfile_to_samples, shuffle(5000, initial=1000),
select, decode("pilrgb"), rename, map_dict, to_tuple, batched, with_epoch, WebLoader).

    python benchmarks/data_pipeline.py [--shards DIR] [--workers 2] [--batch-size 64]

Each pipeline: warm-up batches (worker start, shuffle buffer fill), then a fixed number of timed
batches; runs alternate between the pipelines, best run reported, as wall-clock samples/s and as
samples per CPU-second of the main and worker processes (steadier on a shared machine). Prints a
markdown table and writes JSON to benchmarks/results/data_pipeline.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

from corefm.data import DataConfig, ShardWriter, build_loader, decode_sample, expand_urls  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "data_pipeline.json")
TEXT_LEN = 32


def make_shards(out_dir: str, num_shards: int, per_shard: int, seed: int = 0) -> str:
    """Photo-like 64x64 JPEGs: random crops (64..256 px, random flips) of sklearn's two sample
    photos, with a caption naming the crop."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rng = np.random.default_rng(seed)
    producer = {"name": "benchmarks.data_pipeline", "version": "1", "args": {"seed": seed}}
    with ShardWriter(out_dir, max_samples_per_shard=per_shard, producer=producer) as writer:
        for i in range(num_shards * per_shard):
            which = int(rng.integers(2))
            photo = photos.images[which]
            size = int(rng.integers(64, 257))
            y = int(rng.integers(photo.shape[0] - size))
            x = int(rng.integers(photo.shape[1] - size))
            crop = Image.fromarray(photo[y : y + size, x : x + size]).resize((64, 64), Image.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            buf = io.BytesIO()
            crop.save(buf, format="JPEG", quality=90)
            name = photos.filenames[which].rsplit("/", 1)[-1]
            caption = f"a photo: {size}px crop of {name} at ({x}, {y})"
            writer.write({"__key__": f"{i:08d}", "jpg": buf.getvalue(), "txt": caption})
    return out_dir


def make_preprocess() -> Callable[[Any], torch.Tensor]:
    """open_clip's eval image transform at 64 px (bicubic resize, center crop, CLIP mean/std)."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(64, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(64),
        T.ToTensor(),
        T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])


def tokenize(texts: list[str]) -> torch.Tensor:
    """Trivial tokenizer: utf-8 bytes + 1, zero padded/truncated to TEXT_LEN; [N, TEXT_LEN]."""
    out = torch.zeros(len(texts), TEXT_LEN, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = list(text.encode("utf-8")[:TEXT_LEN])
        out[row, : len(ids)] = torch.tensor(ids) + 1
    return out


class CorefmMap:
    """corefm map_fn: raw sample -> (image [3, 64, 64], tokens [TEXT_LEN])."""

    def __init__(self) -> None:
        self.preprocess = make_preprocess()

    def __call__(self, raw: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        sample = decode_sample(raw, ("jpg", "txt"))
        return self.preprocess(sample["jpg"].convert("RGB")), tokenize([sample["txt"]])[0]


def corefm_loader(urls: list[str], args: argparse.Namespace, verify: bool = True) -> Iterator[Any]:
    """verify: each worker checks a shard's sha256 against dataset.json when it first opens it."""
    cfg = DataConfig(num_workers=args.workers, resampled=args.resampled, seed=0, verify_checksums=verify)
    return build_loader(urls, cfg, rank=0, world_size=1, batch_size=args.batch_size, map_fn=CorefmMap())


def _has_caption_and_image(sample: dict[str, Any]) -> bool:
    return "txt" in sample and any(k in sample for k in ("png", "jpg", "jpeg", "webp"))


def _text_tokens(text: str) -> torch.Tensor:
    return tokenize([text])[0]


def openclip_loader(urls: list[str], args: argparse.Namespace) -> Iterator[Any]:
    """The training pipeline of open_clip_train.data.get_wds_dataset, from webdataset stages."""
    import webdataset as wds

    if args.resampled:
        pipeline = [wds.ResampledShards(urls, deterministic=True)]
    else:
        pipeline = [
            wds.SimpleShardList(urls),
            wds.detshuffle(bufsize=2000, initial=500, seed=0, epoch=0),
            wds.split_by_node,
            wds.split_by_worker,
        ]
    pipeline += [
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(bufsize=5000, initial=1000),
        wds.select(_has_caption_and_image),
        wds.decode("pilrgb", handler=wds.warn_and_continue),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=make_preprocess(), text=_text_tokens),
        wds.to_tuple("image", "text"),
        wds.batched(args.batch_size, partial=False),
    ]
    num_samples = len(urls) * args.per_shard
    num_batches = math.ceil(num_samples / args.batch_size)
    num_worker_batches = math.ceil(num_batches / max(1, args.workers))
    dataset = wds.DataPipeline(*pipeline).with_epoch(num_worker_batches)
    return iter(wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=args.workers,
                              persistent_workers=args.workers > 0))


def _cpu_seconds() -> float:
    """CPU time so far of this process plus its live child processes (the DataLoader workers).

    The machine may be shared, so wall-clock rates move with other load; CPU seconds per sample
    measure the pipelines' own cost. Children are found through /proc (Linux).
    """
    total, tick, me = time.process_time(), os.sysconf("SC_CLK_TCK"), os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def measure(make: Callable[[], Iterator[Any]], args: argparse.Namespace,
            count: Callable[[Any], int] | None = None) -> tuple[float, float]:
    """(samples/s wall, samples per CPU-second) over `args.batches` batches after warm-up.

    count(batch) checks a batch and returns its number of samples (default: this script's
    (images, tokens) batches).
    """
    count = count or (lambda batch: _count_image_text(batch, args.batch_size))
    loader = make()
    for _ in range(args.warmup):
        next(loader)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    samples = sum(count(next(loader)) for _ in range(args.batches))
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    close = getattr(loader, "close", None) or getattr(loader, "_shutdown_workers", None)
    if close is not None:
        close()
    del loader
    return samples / elapsed, samples / cpu


def _count_image_text(batch: tuple[torch.Tensor, torch.Tensor], batch_size: int) -> int:
    images, tokens = batch
    assert images.shape == (batch_size, 3, 64, 64) and tokens.shape == (batch_size, TEXT_LEN)
    return batch_size


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="existing shard directory (with dataset.json); default: build one")
    parser.add_argument("--num-shards", type=int, default=16)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batches", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resampled", action="store_true", help="resampled shards in both pipelines")
    parser.add_argument("--json", default=RESULTS)
    args = parser.parse_args(argv)

    tmp = None
    if args.shards is None:
        tmp = tempfile.TemporaryDirectory(prefix="corefm-bench-")
        t0 = time.perf_counter()
        args.shards = make_shards(tmp.name, args.num_shards, args.per_shard)
        print(f"built {args.num_shards} x {args.per_shard} shards in {time.perf_counter() - t0:.1f}s")
    urls = expand_urls(args.shards)
    pipelines = {
        "corefm build_loader": lambda: corefm_loader(urls, args),
        "corefm build_loader, no sha256 check": lambda: corefm_loader(urls, args, verify=False),
        "open_clip-style webdataset": lambda: openclip_loader(urls, args),
    }
    runs: dict[str, list[float]] = {name: [] for name in pipelines}
    cpu_runs: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(args.repeats):
        for name, make in pipelines.items():
            wall, per_cpu = measure(make, args)
            runs[name].append(wall)
            cpu_runs[name].append(per_cpu)
    best = {name: max(values) for name, values in runs.items()}
    best_cpu = {name: max(values) for name, values in cpu_runs.items()}
    reference, reference_cpu = best["open_clip-style webdataset"], best_cpu["open_clip-style webdataset"]

    print(f"\n{len(urls)} shards, {args.workers} workers, batch {args.batch_size}, "
          f"{args.batches} timed batches after {args.warmup}, best of {args.repeats}"
          f"{', resampled' if args.resampled else ''}\n")
    print("| pipeline | samples/s | ratio vs open_clip-style | samples per CPU-s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, value in best.items():
        print(f"| {name} | {value:,.0f} | {value / reference:.2f}x | {best_cpu[name]:,.0f} | "
              f"{best_cpu[name] / reference_cpu:.2f}x |")
    result = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "shards")},
        "num_shards": len(urls),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
        "load_average_1m": os.getloadavg()[0],
        "runs_samples_per_s": runs,
        "runs_samples_per_cpu_s": cpu_runs,
        "best_samples_per_s": best,
        "best_samples_per_cpu_s": best_cpu,
        "ratio_vs_open_clip_style": best["corefm build_loader"] / reference,
        "cpu_ratio_vs_open_clip_style": best_cpu["corefm build_loader"] / reference_cpu,
        "sha256_check_cost": 1 - best["corefm build_loader"] / best["corefm build_loader, no sha256 check"],
        "sha256_check_cpu_cost": 1 - best_cpu["corefm build_loader"] / best_cpu["corefm build_loader, no sha256 check"],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.json}")
    from benchmarks._chart import write_chart  # the picture beside the JSON

    write_chart("data_pipeline", result, args.json)
    if tmp is not None:
        tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
