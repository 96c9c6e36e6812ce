"""Typed data config, embedded as the `data:` section of a training recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataConfig:
    """Where the shards are and how they are streamed.

    Shard specs (`train`, `val`): a brace pattern (`data/digits/train-{000000..000007}.tar`), a
    comma-separated list of patterns, `::`-separated sources (for `weights`), a directory holding
    `dataset.json` (all of its shards; `dir#val` picks the split `val`), or `pipe:`/http(s) URLs.

    Fields:
        resampled: draw shards with replacement instead of plain epochs (each "epoch" then has
            ceil(num_shards / (world_size * num_workers)) draws per worker).
        weights: one per `::`-separated source, resampled mode only. Each shard of source i is
            drawn with probability proportional to weights[i] (open_clip's upsampling factors), so
            equal weights mean uniform over all shards; for a mixture where source i gives a
            fraction p_i of the shards, use weights[i] = p_i / num_shards_i.
        mix: how `::`-separated sources share a batch. "shards" (default): one stream over all
            sources' shards (with `weights`, weighted shard draws: a random share of each source per
            batch). "batch": every batch holds a fixed number of samples of each source, in
            proportion to `weights` (see corefm.data.mixture); each source streams on its own.
        shuffle_buffer: per-worker sample shuffle buffer size; 0 disables sample shuffling.
        shuffle_shards: permute the shard order each epoch (seeded with seed and epoch).
        seed: seed of all shuffling; with the same seed, ranks and workers the order is identical.
        num_workers: DataLoader worker processes per rank (0 = read in the main process).
        max_skip_fraction: bound on unreadable shards. Each worker counts the shards it opened
            (resume replay included) and those that failed (truncated/corrupt tar, missing remote
            file, fewer samples than the manifest says). The run stops with a DataError once
            failed > max_skip_fraction * max(opened, shards the worker reads per epoch); the
            per-epoch floor keeps one bad shard early in a run from counting as 100%. Samples
            read from a shard before its fault are kept; 0 stops at the first bad shard.
        check_manifest: compare local shard sizes with `dataset.json` (where there is one) before
            streaming, and use its per-shard sample counts to detect shards that end early.
        verify_checksums: with a manifest, each worker checks a local shard's sha256 against it the
            first time it opens that shard in a run (one extra read of the file, which the page
            cache then serves to the reader); a mismatch counts as an unreadable shard.
        scales: image sides for variable-batch multi-scale training (corefm.data.multiscale): each
            step takes one side, the same on every rank, and micro_batch_size * (scale_base / side)^2
            samples per micro-batch; [] trains at the task's own size.
        scale_base: the side at which train.micro_batch_size holds (required with scales).
        scale_key: the batch entry the loader resizes, float images (B, C, H, W).
        worker_timeout: seconds a rank waits for its next batch from its data workers before it takes
            them for hung (a worker can deadlock right after fork, or stall on a network read): it
            stops them and starts new ones at its exact position, so the same batches follow (a
            warning says so); after 3 restarts without a batch in between, a DataError. 0 waits
            forever. Only with num_workers > 0; the slowest legitimate batch must fit in it.
    """

    train: str = ""
    val: str = ""
    resampled: bool = False
    weights: list[float] = field(default_factory=list)
    mix: Literal["shards", "batch"] = "shards"
    shuffle_buffer: int = 1000
    shuffle_shards: bool = True
    seed: int = 0
    num_workers: int = 2
    max_skip_fraction: float = 0.05
    check_manifest: bool = True
    verify_checksums: bool = True
    scales: list[int] = field(default_factory=list)
    scale_base: int = 0
    scale_key: str = "image"
    worker_timeout: float = 300.0
