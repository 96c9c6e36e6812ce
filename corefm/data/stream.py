"""The per-worker sample stream: shards -> raw samples -> shuffle buffer -> map_fn -> batches.

Every DataLoader worker plays one *role* w in [0, W) (W = max(1, num_workers)) on rank r of R.
Role w reads, per epoch e:
    plain:     perm_e[r::R][w::W], perm_e = shard indices permuted with (seed, e) (identity
               without shuffle_shards), so an epoch visits every shard exactly once over all roles;
    resampled: ceil(N / (R*W)) shards drawn with replacement (per-shard weights) with an RNG
               seeded from (seed, e, r, w).
Samples of the epoch go through a shuffle buffer seeded from (seed, e, r, w) that is flushed at
the epoch's end, then through `map_fn`, then into batches of `batch_size` (collated here, in the
worker). Each batch travels with its position (role, epoch, samples of the epoch consumed after
it): a role restarted at (e, o) skips epochs before e by number and replays the first o samples
of epoch e as raw bytes (no decode, no map_fn) through the same shuffle buffer, so everything
after o comes out exactly as before. The global python/numpy/torch RNGs are re-seeded before each
batch's map_fn calls from (seed, e, r, w, batch start), so random augmentations replay too.

With a :class:`corefm.data.multiscale.ScalePlan` (``data.scales``) the n-th batch of a rank takes the
plan's side and batch size for n: worker i, started when the rank had delivered n0 batches, yields
rank batches n0 + i, n0 + i + W, ... (the in-order DataLoader takes worker 0's first), so it knows n.

After a resume at another world size (see :mod:`corefm.data.elastic`) a stream also carries, per
epoch, the samples the earlier world already consumed: whole shards are not opened, single samples
are dropped before the shuffle buffer (so replay stays exact), and the epoch may give no batch.

An unreadable shard (truncated, corrupt, missing) is logged, counted and skipped; the samples
read from it before the fault are kept. Replay meets the same fault at the same place, so resume
stays exact as long as the damage does not change in between.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from corefm.data.errors import DataError, SkipSample, one_line
from corefm.errors import CorefmError
from corefm.data.manifest import sha256_file
from corefm.data.shards import READ_ERRORS, ShardReadError, iter_shard
from corefm.data.urls import local_path

if TYPE_CHECKING:
    from corefm.data.multiscale import ScalePlan

log = logging.getLogger("corefm.data")

MapFn = Callable[[dict[str, Any]], Any]
CollateFn = Callable[[list[Any]], Any]

_LOGGED_SKIPS = 5  # skipped-sample warnings per role before going quiet (they are still counted)
# A sample's own bad value (a label that is not a number, a token array of floats, an image that
# does not decode) as raised by a map_fn: that sample is skipped and counted, like a corrupt one.
# corefm's own errors (a DataError about the data config, a ConfigError) stop the run instead.
SAMPLE_ERRORS = (SkipSample, ValueError, TypeError, KeyError, IndexError, OverflowError, UnicodeError, OSError,
                 EOFError)
# The skip bound on samples is measured over at least this many, so one early bad sample is not a
# fraction of 100%.
_MIN_SAMPLES_FOR_BOUND = 100


def seed_int(*parts: object) -> int:
    """A 63-bit seed from any parts; stable across processes and Python versions."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def shuffle_buffer(samples: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Buffered shuffle: fill `size` items, then emit a random one per new item; flush at end.

    The output order depends only on the input sequence and `rng`, which is what lets resume
    replay it from raw samples.
    """
    if size <= 1:
        yield from samples
        return
    buf: list[Any] = []
    for item in samples:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        out, buf[i] = buf[i], item
        yield out
    rng.shuffle(buf)
    yield from buf


class _SeededGlobalRngs:
    """Seed python/numpy/torch global RNGs for one batch's map_fn calls.

    In the main process (num_workers=0) the trainer's RNG states are saved before and restored
    after, so data augmentation neither consumes nor depends on the training RNG stream.
    """

    def __init__(self, seed: int, restore: bool) -> None:
        self.seed, self.restore = seed, restore

    def __enter__(self) -> None:
        if self.restore:
            self.saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(self.seed)
        np.random.seed(self.seed % (1 << 32))
        # the CPU generator only: torch.manual_seed would also reseed the trainer's CUDA RNGs
        torch.default_generator.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        if self.restore:
            random.setstate(self.saved[0])
            np.random.set_state(self.saved[1])
            torch.set_rng_state(self.saved[2])


def shard_name(url: str) -> str:
    """A shard's identity across runs: its file name (a data set may move to another directory)."""
    return os.path.basename(local_path(url))


@dataclass
class Consumed:
    """Samples of one epoch an earlier world already trained on: whole shards (by name) and single
    samples (shard name, ``__key__``)."""

    shards: set[str] = field(default_factory=set)
    samples: set[tuple[str, str]] = field(default_factory=set)

    def update(self, other: "Consumed") -> None:
        self.shards |= other.shards
        self.samples |= other.samples

    def __len__(self) -> int:
        return len(self.shards) + len(self.samples)


@dataclass
class _Counters:
    """Per-role health counters since this worker started (resume replay included)."""

    shards_opened: int = 0
    skipped_shards: int = 0
    skipped_samples: int = 0
    mapped_samples: int = 0  # samples given to map_fn (skipped ones included)


@dataclass
class StreamSpec:
    """Everything that fixes the order of a stream (see the module docstring).

    urls: all shards, flat; url_weights: per-shard weight (resampled mode only);
    epochs: None for an infinite stream; expected_samples: url -> count from manifests.
    """

    urls: list[str]
    rank: int
    world_size: int
    num_workers: int
    batch_size: int
    seed: int = 0
    resampled: bool = False
    url_weights: list[float] | None = None
    shuffle_shards: bool = True
    shuffle_buffer: int = 1000
    drop_last: bool = True
    epochs: int | None = None
    max_skip_fraction: float = 0.05
    expected_samples: dict[str, int] | None = None
    expected_sha256: dict[str, str] | None = None  # url -> sha256, checked when first opened
    scales: "ScalePlan | None" = None  # variable-batch multi-scale sampling (batch_size is then the plan's)

    @property
    def roles(self) -> int:
        return max(1, self.num_workers)

    def epoch_shards(self, epoch: int, role: int) -> list[str]:
        """The shards role `role` of this rank reads in `epoch`, in reading order."""
        n, r, world, roles = len(self.urls), self.rank, self.world_size, self.roles
        if self.resampled:
            rng = random.Random(seed_int("corefm-shards", self.seed, epoch, r, role))
            return rng.choices(self.urls, weights=self.url_weights, k=math.ceil(n / (world * roles)))
        order = list(range(n))
        if self.shuffle_shards:
            random.Random(seed_int("corefm-shard-perm", self.seed, epoch)).shuffle(order)
        return [self.urls[i] for i in order[r::world][role::roles]]


class ShardStream(IterableDataset):
    """IterableDataset yielding `(collated_batch, position)` per batch; see the module docstring.

    position = {"role", "epoch", "offset", "shards_opened", "skipped_shards", "skipped_samples"}.
    A DataError inside a worker is yielded as `(None, {"role": w, "error": message})` instead of
    raised, so the main process gets the one-line message rather than a wrapped traceback.

    Args:
        spec: the order-defining settings.
        map_fn: raw sample -> sample (decode + transform); raise SkipSample to drop one.
        collate_fn: list of samples -> batch.
        first_batch: the rank batches n0 delivered before these workers started. DataLoader worker
            i plays role (i + n0) % roles, since the in-order DataLoader takes worker 0's batch first,
            and yields rank batches n0 + i, n0 + i + W, ... (the multi-scale plan is indexed by them).
        start: per role (epoch, offset) to resume from; default (0, 0) for all.
        consumed: epoch -> samples to leave out of that epoch (a resume at another world size).
    """

    def __init__(
        self,
        spec: StreamSpec,
        map_fn: MapFn,
        collate_fn: CollateFn,
        start: list[tuple[int, int]] | None = None,
        consumed: dict[int, Consumed] | None = None,
        first_batch: int = 0,
    ) -> None:
        super().__init__()
        self.spec, self.map_fn, self.collate_fn = spec, map_fn, collate_fn
        self.first_batch = first_batch
        self.start = start or [(0, 0)] * spec.roles
        self.consumed = consumed or {}
        self._verified: set[str] = set()  # shards whose sha256 this process has checked

    def __iter__(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None and info.num_workers != self.spec.roles:
            raise DataError(f"stream built for {self.spec.roles} workers runs in {info.num_workers}")
        role = (worker + self.first_batch) % self.spec.roles
        epoch, offset = self.start[role]
        try:
            yield from self._role_batches(role, epoch, offset, restore_rngs=info is None, worker=worker)
        except DataError as err:
            yield None, {"role": role, "error": str(err)}

    def _read(self, shards: list[str], counters: _Counters, role: int,
              consumed: Consumed | None = None) -> Iterator[dict[str, Any]]:
        """Raw samples of `shards` in order, less `consumed`; unreadable shards are logged, counted, skipped."""
        spec, expected = self.spec, self.spec.expected_samples or {}
        for url in shards:
            name = shard_name(url)
            if consumed is not None and name in consumed.shards:
                continue
            counters.shards_opened += 1
            try:
                self._verify_once(url)
                samples = iter_shard(url, expected.get(url))
                if consumed is not None and consumed.samples:
                    samples = (x for x in samples if (name, x["__key__"]) not in consumed.samples)
                yield from samples
            except READ_ERRORS as err:
                counters.skipped_shards += 1
                reason = f"{type(err).__name__}: {one_line(err)}"
                log.warning("skipping unreadable shard %s: %s", url, reason)
                floor = max(counters.shards_opened, len(shards))
                if counters.skipped_shards > spec.max_skip_fraction * floor:
                    raise DataError(
                        f"rank {spec.rank} worker {role}: {counters.skipped_shards} of "
                        f"{counters.shards_opened} shards unreadable (bound "
                        f"{spec.max_skip_fraction:.0%}): last was {url}: {reason}"
                    ) from None

    def _verify_once(self, url: str) -> None:
        """The manifest's sha256 against the file, the first time this process opens it."""
        want = (self.spec.expected_sha256 or {}).get(url)
        if want is None or url in self._verified:
            return
        got = sha256_file(local_path(url))
        if got != want:
            raise ShardReadError(f"its sha256 {got[:12]}... is not the {want[:12]}... of its dataset.json "
                                 "(the file changed since the manifest was written)")
        self._verified.add(url)

    def _role_batches(
        self, role: int, start_epoch: int, start_offset: int, restore_rngs: bool, worker: int = 0
    ) -> Iterator[tuple[Any, dict[str, Any]]]:
        spec = self.spec
        counters = _Counters()
        epoch = start_epoch
        n = self.first_batch + worker  # the rank batch this worker yields next
        side, size = self._plan(n)
        while spec.epochs is None or epoch < spec.epochs:
            shards = spec.epoch_shards(epoch, role)
            samples = self._epoch_samples(epoch, role, shards, counters)
            skip = start_offset if epoch == start_epoch else 0
            # resume replay: raw samples only, never decoded or mapped
            consumed = sum(1 for _ in islice(samples, skip))
            batches = 0
            while True:
                seed = seed_int("corefm-map", spec.seed, epoch, spec.rank, role, consumed)
                with _SeededGlobalRngs(seed, restore_rngs):
                    batch, consumed, done = self._fill(samples, consumed, counters, role, size)
                if len(batch) == size or (batch and not spec.drop_last):
                    position = {"role": role, "epoch": epoch, "offset": consumed, **vars(counters)}
                    collated = self.collate_fn(batch)
                    yield (collated if side is None else spec.scales.resize(collated, side)), position
                    batches += 1
                    n += spec.roles
                    side, size = self._plan(n)
                if done:
                    break
            if batches == 0 and skip == 0 and spec.epochs is None and epoch not in self.consumed:
                # an infinite stream that cannot fill one batch per epoch would spin forever
                usable = consumed - counters.skipped_samples
                advice = ("its data is unusable (see the warnings above)" if counters.skipped_shards == len(shards)
                          or usable <= 0 else "use fewer workers or ranks, or a smaller batch")
                raise DataError(
                    f"rank {spec.rank} worker {role}: epoch {epoch} gave {consumed} samples from "
                    f"{len(shards)} shards ({counters.skipped_samples} skipped, {counters.skipped_shards} "
                    f"shards unreadable so far), not one batch of {spec.batch_size}: {advice}"
                )
            epoch += 1

    def _plan(self, n: int) -> tuple[int | None, int]:
        """(image side or None, batch size) of rank batch ``n``."""
        plan = self.spec.scales
        if plan is None:
            return None, self.spec.batch_size
        side = plan.side(n)
        return side, plan.batch_size(side)

    def _epoch_samples(self, epoch: int, role: int, shards: list[str], counters: _Counters) -> Iterator[dict[str, Any]]:
        """Raw samples of one role's epoch, in the order they leave the shuffle buffer."""
        spec = self.spec
        rng = random.Random(seed_int("corefm-samples", spec.seed, epoch, spec.rank, role))
        return shuffle_buffer(self._read(shards, counters, role, self.consumed.get(epoch)), spec.shuffle_buffer, rng)

    def consumed_samples(self, role: int, epoch: int, offset: int) -> Consumed:
        """The first `offset` samples role `role` took from epoch `epoch` (raw reads, no decode):
        what a position (epoch, offset) says this role has trained on in that epoch."""
        samples = self._epoch_samples(epoch, role, self.spec.epoch_shards(epoch, role), _Counters())
        return Consumed(samples={(shard_name(x["__url__"]), x["__key__"]) for x in islice(samples, offset)})

    def _fill(
        self, samples: Iterator[dict[str, Any]], consumed: int, counters: _Counters, role: int, size: int
    ) -> tuple[list[Any], int, bool]:
        """Map samples until a batch of ``size`` is full; returns (batch, consumed, epoch_exhausted)."""
        batch: list[Any] = []
        map_fn = self.map_fn
        for raw in samples:
            consumed += 1
            counters.mapped_samples += 1
            try:
                batch.append(map_fn(raw))
            except CorefmError:
                raise
            except SAMPLE_ERRORS as err:
                self._skip_sample(raw, err, counters, role)
            if len(batch) == size:
                return batch, consumed, False
        return batch, consumed, True

    def _skip_sample(self, raw: dict[str, Any], err: BaseException, counters: _Counters, role: int) -> None:
        """Count a skipped sample, name the first few, and stop past ``max_skip_fraction``."""
        counters.skipped_samples += 1
        why = one_line(err) if isinstance(err, SkipSample) else f"{type(err).__name__}: {one_line(err)}"
        where = f"sample {raw.get('__key__')} of {raw.get('__url__')}"
        if counters.skipped_samples <= _LOGGED_SKIPS:
            log.warning("skipping %s: %s", where, why)
        bound = self.spec.max_skip_fraction * max(counters.mapped_samples, _MIN_SAMPLES_FOR_BOUND)
        if counters.skipped_samples > bound:
            raise DataError(f"rank {self.spec.rank} worker {role}: {counters.skipped_samples} of "
                            f"{counters.mapped_samples} samples unusable (bound {self.spec.max_skip_fraction:.0%}); "
                            f"the last: {where}: {why}")
