"""Loaders over shard streams: the infinite, exactly resumable training loader and the
single-pass eval loader. Both run a torch DataLoader(batch_size=None) over a ShardStream whose
workers yield whole batches."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
from collections import defaultdict
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, default_collate

from corefm.data import elastic
from corefm.data.config import DataConfig
from corefm.data.errors import DataError, one_line
from corefm.data.manifest import MANIFEST_NAME, check_shards, load_manifest
from corefm.data.mixture import MixedLoader, build_mixed_loader
from corefm.data.multiscale import ScalePlan
from corefm.data.stream import CollateFn, MapFn, ShardStream, StreamSpec, seed_int
from corefm.data.urls import expand_sources, expand_urls, is_local, local_path

log = logging.getLogger("corefm.data")

STATE_VERSION = 2  # 2 added the earlier world's record (a resume at another world size)


def _identity(item: Any) -> Any:
    # batches are collated inside the workers; DataLoader's default_convert would turn numpy
    # arrays a user's collate_fn returns into tensors
    return item


def _sources(urls_or_spec: str | Sequence[str]) -> list[list[str]]:
    if isinstance(urls_or_spec, str):
        return expand_sources(urls_or_spec)
    urls = [url for pattern in urls_or_spec for url in expand_urls(pattern)]
    if not urls:
        raise DataError("no shards given: the shard list is empty")
    return [urls]


def _manifest_counts(urls: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    """Check local shards against the `dataset.json` of their directory (where there is one)
    and return (url -> sample count, url -> sha256) for the shards a manifest covers."""
    by_dir: dict[str, list[str]] = defaultdict(list)
    for url in urls:
        if is_local(url):
            by_dir[os.path.dirname(os.path.abspath(local_path(url)))].append(url)
    counts: dict[str, int] = {}
    sha256: dict[str, str] = {}
    for directory, dir_urls in by_dir.items():
        if not os.path.isfile(os.path.join(directory, MANIFEST_NAME)):
            log.info("no %s in %s: shard sizes and sample counts are not checked", MANIFEST_NAME, directory)
            continue
        manifest = load_manifest(directory)
        check_shards(manifest, dir_urls)
        listed = manifest.by_name()
        for url in dir_urls:
            info = listed[os.path.basename(local_path(url))]
            counts[url] = info.samples
            if info.sha256:
                sha256[url] = info.sha256
    return counts, sha256


def _check_common(cfg: DataConfig, rank: int, world_size: int, batch_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"bad rank {rank} for world size {world_size}")
    if batch_size < 1:
        raise DataError(f"batch size must be positive, got {batch_size}")
    if cfg.num_workers < 0 or cfg.shuffle_buffer < 0:
        raise DataError("data.num_workers and data.shuffle_buffer must be >= 0")
    if cfg.worker_timeout < 0:
        raise DataError(f"data.worker_timeout must be >= 0 seconds (0 waits forever), got {cfg.worker_timeout}")
    if not 0.0 <= cfg.max_skip_fraction <= 1.0:
        raise DataError(f"data.max_skip_fraction must be in [0, 1], got {cfg.max_skip_fraction}")


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGINT to their rank: SLURM's --signal, scancel and Ctrl-C
    reach the whole process group, and a worker that died of them would take the rank down before
    it could save its stop checkpoint. The rank stops its workers when it is done."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


MAX_WORKER_RESTARTS = 3


def _dataloader(stream: ShardStream, num_workers: int, pin_memory: bool, seed: int, timeout: float = 0.0) -> DataLoader:
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        timeout=timeout if num_workers > 0 else 0,
        collate_fn=_identity,
        pin_memory=pin_memory,
        worker_init_fn=_ignore_stop_signals,
        in_order=True,  # the role rotation on resume relies on round-robin delivery
        # DataLoader draws its worker base seed from this generator instead of consuming the
        # trainer's global torch RNG (our map_fn seeding makes the base seed irrelevant anyway)
        generator=torch.Generator().manual_seed(seed),
    )


def _stop_workers(it: Iterator[Any]) -> None:
    """Stop a DataLoader iterator's workers. Its shutdown asks them to exit, waits a little, and then
    terminates the stragglers with SIGTERM, which ours ignore (see _ignore_stop_signals): a worker
    still alive after that is hung and is killed, so that neither this rank nor its exit waits on it
    forever. (Killing first would be quicker, but a healthy worker killed while writing a batch to
    the shared result queue leaves its lock held and the shutdown blocked.)"""
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for worker in getattr(it, "_workers", ()):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=10)


def _workers_hung(err: RuntimeError) -> bool:
    """Whether DataLoader raised because its workers delivered nothing within its timeout."""
    return str(err).startswith("DataLoader timed out after")


def _restart_or_raise(restarts: int, timeout: float, where: str) -> None:
    """Warn that hung workers are restarted (restart number ``restarts``), or raise past the bound."""
    if restarts > MAX_WORKER_RESTARTS:
        raise DataError(f"{where}: the data workers delivered no batch for {timeout:g} s, {MAX_WORKER_RESTARTS} "
                        "restarts in a row (raise data.worker_timeout if a batch legitimately takes longer)")
    print(f"corefm: warning: {where}: the data workers delivered no batch for {timeout:g} s; restarted them at "
          f"the same position (restart {restarts} of at most {MAX_WORKER_RESTARTS})", file=sys.stderr, flush=True)


class ResumableLoader:
    """Infinite iterator over training batches with an exact, JSON-serialisable position.

    `state_dict()` after k batches, passed as `state=` to `build_loader` with the same settings,
    gives a loader whose batches are exactly batches k, k+1, ... of the uninterrupted run.
    `stats()` sums the workers' health counters (shards opened/skipped, samples skipped) as last
    reported with a delivered batch, since this object was built (resume replay re-counts).
    """

    def __init__(
        self,
        stream: ShardStream,
        num_workers: int,
        batches: int,
        fingerprint: dict[str, Any],
        pin_memory: bool = False,
        num_samples: int | None = None,
        history: dict[str, Any] | None = None,
        worker_timeout: float = 0.0,
    ) -> None:
        self.stream, self.num_workers, self.pin_memory = stream, num_workers, pin_memory
        self.worker_timeout = worker_timeout
        self.worker_restarts = 0  # restarts of hung workers since the last delivered batch
        self.batches = batches
        self.history = history  # the earlier world's record while its epochs are in progress
        self.remapped = ""  # after a resume at another world size: what the remap did, one phrase
        self.positions = [list(p) for p in stream.start]
        self.fingerprint = fingerprint
        self.num_samples = num_samples  # samples in all shards, if manifests give counts
        self._counters: dict[int, dict[str, int]] = {}
        self._base = {"shards_opened": 0, "skipped_shards": 0, "skipped_samples": 0}
        self._iter: Iterator[Any] | None = None

    def __iter__(self) -> "ResumableLoader":
        return self

    def __next__(self) -> Any:
        if self._iter is None:
            # (re)start the workers at the current position: after close() this is a resume;
            # the new workers count from zero, so keep what the old ones reported
            self._base = self.stats()
            self._counters.clear()
            self.stream.first_batch = self.batches  # sets the workers' roles too
            self.stream.start = [(e, o) for e, o in self.positions]
            seed = seed_int("corefm-loader", self.fingerprint["seed"], self.fingerprint["rank"])
            self._iter = iter(_dataloader(self.stream, self.num_workers, self.pin_memory, seed, self.worker_timeout))
        try:
            batch, position = next(self._iter)
        except DataError as err:  # raised inside a worker outside the stream's own catch
            self.close()
            raise DataError(one_line(err)) from None
        except RuntimeError as err:
            if not _workers_hung(err):
                raise
            _stop_workers(self._iter)
            self._iter = None  # the next call restarts the workers at self.positions
            self.worker_restarts += 1
            _restart_or_raise(self.worker_restarts, self.worker_timeout, f"batch {self.batches}")
            return next(self)
        self.worker_restarts = 0
        if batch is None:
            self.close()
            raise DataError(position["error"])
        role = position["role"]
        self.positions[role] = [position["epoch"], position["offset"]]
        self._counters[role] = {k: position[k] for k in ("shards_opened", "skipped_shards", "skipped_samples")}
        self.batches += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """{"version": 2, "batches": n, "positions": [[epoch, offset] per worker role],
        "fingerprint": {settings that fix the order}, "history": an earlier world's record or None
        (see corefm.data.elastic)}; JSON-serialisable."""
        if self.history and min(e for e, _ in self.positions) > elastic.last_epoch(self.history):
            self.history = None  # every role is past the epochs it covers
        return {
            "version": STATE_VERSION,
            "batches": self.batches,
            "positions": [list(p) for p in self.positions],
            "fingerprint": dict(self.fingerprint),
            "history": self.history,
        }

    def stats(self) -> dict[str, int]:
        """{"shards_opened", "skipped_shards", "skipped_samples"} summed over the workers."""
        total = dict(self._base)
        for counters in self._counters.values():
            for key, value in counters.items():
                total[key] += value
        return total

    def close(self) -> None:
        """Stop the worker processes; a later `next()` restarts them at the current position."""
        if self._iter is not None:
            _stop_workers(self._iter)
            self._iter = None


def _check_version(state: dict[str, Any]) -> None:
    if state.get("version") not in (1, STATE_VERSION):
        raise DataError(f"data state version {state.get('version')!r} is not one of 1, {STATE_VERSION}")


def _resume_point(state: dict[str, Any] | None, fingerprint: dict[str, Any], roles: int) -> tuple[int, list[tuple[int, int]]]:
    if not state:
        return 0, [(0, 0)] * roles
    _check_version(state)
    old = state.get("fingerprint", {})
    for key, value in fingerprint.items():
        if old.get(key) != value:
            raise DataError(
                f"cannot resume the data position exactly: {key} was {old.get(key)!r}, now "
                f"{value!r} (keep it, or start without the saved data state)"
            )
    positions = [(int(e), int(o)) for e, o in state["positions"]]
    if len(positions) != roles:
        raise DataError(f"data state has {len(positions)} worker positions, expected {roles}")
    return int(state["batches"]), positions


def build_loader(
    urls_or_spec: str | Sequence[str],
    cfg: DataConfig,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    map_fn: MapFn,
    collate_fn: CollateFn | None = None,
    state: dict[str, Any] | None = None,
    world_state: list[dict[str, Any]] | None = None,
    drop_last: bool = True,
    pin_memory: bool = False,
    batches_per_step: int = 1,
) -> ResumableLoader | MixedLoader:
    """The infinite training loader of one rank (a MixedLoader with ``data.mix: batch``).

    Args:
        urls_or_spec: a shard spec (see DataConfig) or a list of patterns/URLs (one source).
        cfg: data settings; cfg.num_workers processes per rank (0 = main process).
        rank, world_size: this rank and the number of ranks; shards are split by rank.
        batch_size: per-rank batch size; with drop_last each worker drops its partial last batch
            of an epoch, otherwise it is yielded.
        map_fn: raw sample {"__key__", "__url__", "<ext>": bytes} -> sample; runs in the
            workers; raise SkipSample to drop a sample. It may use python/numpy/torch global
            RNGs: they are seeded per batch so that resumed runs replay augmentations.
        collate_fn: list of samples -> batch (default torch default_collate), in the workers.
        state: a `state_dict()` to resume from exactly.
        world_state: instead of `state`, every rank's `state_dict()` (in rank order) of a world of
            another size (ranks x workers): the position is remapped so that the epoch in progress
            goes on without repeating or skipping a sample (see corefm.data.elastic);
            `loader.remapped` then says what was done.
        batches_per_step: consecutive batches that share an image side under ``data.scales``
            (the trainer's grad_accum; see corefm.data.multiscale).
    """
    _check_common(cfg, rank, world_size, batch_size)
    sources = _sources(urls_or_spec)
    plan = None
    if cfg.scales:
        if cfg.mix == "batch":
            raise DataError("data.scales cannot be combined with data.mix: batch (each source would need "
                            "its own share of a batch whose size changes every step)")
        plan = ScalePlan(tuple(cfg.scales), cfg.scale_base, batch_size, batches_per_step, cfg.seed, cfg.scale_key)
    if cfg.mix == "batch":
        return build_mixed_loader(build_loader, sources, cfg, rank=rank, world_size=world_size,
                                  batch_size=batch_size, map_fn=map_fn, collate_fn=collate_fn, state=state,
                                  world_state=world_state, drop_last=drop_last, pin_memory=pin_memory)
    urls = [url for source in sources for url in source]
    roles = max(1, cfg.num_workers)
    url_weights = None
    if cfg.weights and not cfg.resampled:
        raise DataError("data.weights needs data.resampled: true")
    if cfg.resampled and cfg.weights:
        if len(cfg.weights) != len(sources):
            raise DataError(f"data.weights has {len(cfg.weights)} entries for {len(sources)} '::'-separated sources")
        if any(w < 0 for w in cfg.weights) or not any(w > 0 for w in cfg.weights):
            raise DataError(f"data.weights must be >= 0 with one > 0, got {cfg.weights}")
        url_weights = [float(w) for w, source in zip(cfg.weights, sources) for _ in source]
    if not cfg.resampled and len(urls) < world_size * roles:
        raise DataError(
            f"{len(urls)} shards cannot feed {world_size} ranks x {roles} workers: plain epochs "
            f"need at least {world_size * roles} shards (reshard, lower data.num_workers, or set "
            "data.resampled: true)"
        )
    counts, sha256 = _manifest_counts(urls) if cfg.check_manifest else ({}, {})
    spec = StreamSpec(
        urls=urls, rank=rank, world_size=world_size, num_workers=cfg.num_workers,
        batch_size=batch_size, seed=cfg.seed, resampled=cfg.resampled, url_weights=url_weights,
        shuffle_shards=cfg.shuffle_shards, shuffle_buffer=cfg.shuffle_buffer, drop_last=drop_last,
        epochs=None, max_skip_fraction=cfg.max_skip_fraction, expected_samples=counts,
        expected_sha256=sha256 if cfg.verify_checksums else None, scales=plan,
    )
    fingerprint = {
        "rank": rank, "world_size": world_size, "num_workers": cfg.num_workers,
        "batch_size": batch_size, "seed": cfg.seed, "resampled": cfg.resampled,
        "weights": [float(w) for w in cfg.weights], "shuffle_shards": cfg.shuffle_shards,
        "shuffle_buffer": cfg.shuffle_buffer, "drop_last": drop_last, "num_shards": len(urls),
        # shard names, not paths, so a data set moved to another directory still resumes
        "shards": hashlib.sha1("\n".join(os.path.basename(u) for u in urls).encode()).hexdigest()[:16],
        **(plan.fingerprint() if plan else {}),
    }
    remapped = None
    if world_state:
        for s in world_state:
            _check_version(s)
        remapped = elastic.remap(world_state, fingerprint, spec)
        batches, start, consumed, history = 0, remapped.positions, remapped.consumed, remapped.record
    else:
        batches, start = _resume_point(state, fingerprint, roles)
        history = (state or {}).get("history")
        consumed = elastic.consumed_by(history, spec) if history else {}
    stream = ShardStream(spec, map_fn, collate_fn or default_collate, start=start, consumed=consumed,
                         first_batch=batches)
    num_samples = sum(counts.values()) if counts and len(counts) == len(urls) else None
    loader = ResumableLoader(stream, cfg.num_workers, batches, fingerprint, pin_memory, num_samples, history,
                             cfg.worker_timeout)
    loader.remapped = remapped.describe() if remapped else ""
    return loader


class EvalLoader:
    """Single pass over a rank's eval shards; each `iter()` starts a fresh pass.

    Shards are split by rank only (urls[rank::world_size]), then across this rank's workers,
    so every sample is seen exactly once over all ranks. No shuffling; last partial batch kept.
    """

    def __init__(self, stream: ShardStream, num_workers: int, pin_memory: bool, num_samples: int | None,
                 worker_timeout: float = 0.0) -> None:
        self.stream, self.num_workers, self.pin_memory = stream, num_workers, pin_memory
        self.num_samples = num_samples  # samples of this rank's shards, if manifests give counts
        self.worker_timeout = worker_timeout
        self.last_stats: dict[str, int] = {}

    def __iter__(self) -> Iterator[Any]:
        counters: dict[int, dict[str, int]] = {}
        delivered, restarts = 0, 0
        try:
            while True:
                # A pass is deterministic (no shuffling, round-robin delivery), so after hung workers
                # a fresh pass that skips the batches already delivered goes on where this one stopped.
                loader = iter(_dataloader(self.stream, self.num_workers, self.pin_memory, self.stream.spec.seed,
                                          self.worker_timeout))
                try:
                    for index, (batch, position) in enumerate(loader):
                        if batch is None:
                            raise DataError(position["error"])
                        counters[position["role"]] = {
                            k: position[k] for k in ("shards_opened", "skipped_shards", "skipped_samples")
                        }
                        if index >= delivered:
                            delivered, restarts = delivered + 1, 0
                            yield batch
                    return
                except RuntimeError as err:
                    if not _workers_hung(err):
                        raise
                    restarts += 1
                    _restart_or_raise(restarts, self.worker_timeout, f"eval batch {delivered}")
                finally:
                    _stop_workers(loader)
        except DataError as err:
            raise DataError(one_line(err)) from None
        finally:
            self.last_stats = {
                k: sum(c[k] for c in counters.values())
                for k in ("shards_opened", "skipped_shards", "skipped_samples")
            }


def build_eval_loader(
    urls_or_spec: str | Sequence[str],
    cfg: DataConfig,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    map_fn: MapFn,
    collate_fn: CollateFn | None = None,
    pin_memory: bool = False,
) -> EvalLoader:
    """A single-pass eval loader of one rank (see EvalLoader); arguments as for build_loader.

    Uses min(cfg.num_workers, shards of this rank) workers; a rank with no shards yields nothing.
    """
    _check_common(cfg, rank, world_size, batch_size)
    urls = [url for source in _sources(urls_or_spec) for url in source]
    counts, sha256 = _manifest_counts(urls) if cfg.check_manifest else ({}, {})
    mine = urls[rank::world_size]
    workers = min(cfg.num_workers, len(mine))
    # unshuffled plain order: role w reads urls[rank::world_size][w::workers], i.e. `mine`
    spec = StreamSpec(
        urls=urls, rank=rank, world_size=world_size, num_workers=workers, batch_size=batch_size,
        seed=cfg.seed, shuffle_shards=False, shuffle_buffer=0, drop_last=False, epochs=1,
        max_skip_fraction=cfg.max_skip_fraction, expected_samples=counts,
        expected_sha256=sha256 if cfg.verify_checksums else None,
    )
    stream = ShardStream(spec, map_fn, collate_fn or default_collate)
    num_samples = sum(counts[u] for u in mine) if all(u in counts for u in mine) and counts else None
    return EvalLoader(stream, workers, pin_memory, num_samples, cfg.worker_timeout)
