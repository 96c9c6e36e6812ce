"""Continuing a training stream at another world size (ranks x workers) without repeating or skipping
a sample of the epoch in progress.

Roles split an epoch's shards by ``perm_e[r::R][w::W]`` (see :mod:`corefm.data.stream`), so a new
world reads different shards per role than the old one did. The old world's positions say how far
each of its roles got: a role past epoch ``e`` trained on all of its epoch-``e`` shards; a role at
``(e, o)`` trained on the first ``o`` samples out of its shuffle buffer, which replaying its raw reads
(no decode) names exactly. Every new role then starts at the old world's lowest epoch and leaves out,
for each epoch some old role had begun, what the old world consumed; later epochs are plain.

The old world's record (its size and every role's position) is kept in each new rank's data state,
so a same-size resume replays the same exclusions, and a further size change (2 -> 1 -> 2 within an
epoch) nests it: what the middle world consumed is replayed under the first world's exclusions. A
record is dropped once every role of the current world is past the epochs it covers.

Resampled streams draw shards with replacement and have no epoch to complete: their new roles start
at the next epoch number.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from corefm.data.errors import DataError
from corefm.data.stream import Consumed, ShardStream, StreamSpec, shard_name

# What may differ between the old and the new world's loaders: the world's shape and the batch
# (positions count samples, not batches). Everything else fixes which sample is which.
ELASTIC_KEYS = ("rank", "world_size", "num_workers", "batch_size")


@dataclass
class Remap:
    """A new rank's start after a world-size change. ``positions`` per new role; ``consumed`` per
    epoch; ``record`` goes into the new world's data states."""

    positions: list[tuple[int, int]]
    consumed: dict[int, Consumed]
    record: dict[str, Any] | None
    old_world: tuple[int, int]
    epoch: int

    def describe(self) -> str:
        """One phrase for the world-size-change log line."""
        world, workers = self.old_world
        shards = sum(len(c.shards) for c in self.consumed.values())
        samples = sum(len(c.samples) for c in self.consumed.values())
        if self.record is None:
            return f"data: resampled stream, continuing at epoch {self.epoch} (was {world} ranks x {workers} roles)"
        return (f"data: epoch {self.epoch} continues without the {shards} shard(s) and {samples} single sample(s) "
                f"{world} ranks x {workers} roles already trained on")


def world_record(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The old world's record from every old rank's ``state_dict()`` (in rank order)."""
    fp = states[0]["fingerprint"]
    if [s["fingerprint"]["rank"] for s in states] != list(range(fp["world_size"])):
        raise DataError(f"the data states of a {fp['world_size']}-rank checkpoint are incomplete or out of order")
    # a rank whose roles all passed the record's epochs dropped it; the others still carry it
    history = next((s["history"] for s in states if s.get("history")), None)
    return {"world_size": fp["world_size"], "num_workers": fp["num_workers"],
            "positions": [[list(p) for p in s["positions"]] for s in states], "history": history}


def first_epoch(record: dict[str, Any]) -> int:
    return min(e for roles in record["positions"] for e, _ in roles)


def last_epoch(record: dict[str, Any] | None) -> int:
    """The highest epoch of which the record's world (or an earlier one) consumed anything; -1: none."""
    if not record:
        return -1
    hi = max(e if o > 0 else e - 1 for roles in record["positions"] for e, o in roles)
    return max(hi, last_epoch(record.get("history")))


def consumed_by(record: dict[str, Any], base: StreamSpec) -> dict[int, Consumed]:
    """epoch -> what the record's world and those before it consumed, for the epochs it had begun."""
    lo, hi = first_epoch(record), last_epoch(record)
    inner = consumed_by(record["history"], base) if record.get("history") else {}
    out = {e: Consumed() for e in range(lo, hi + 1)}
    for e, c in inner.items():
        if e in out:
            out[e].update(c)
    world, workers = record["world_size"], record["num_workers"]
    for rank, roles in enumerate(record["positions"]):
        spec = replace(base, rank=rank, world_size=world, num_workers=workers, expected_sha256=None)
        stream = ShardStream(spec, map_fn=lambda x: x, collate_fn=list, consumed=inner)
        for role, (epoch, offset) in enumerate(roles):
            for e in range(lo, min(epoch, hi + 1)):  # epochs this role finished: all of its shards
                out[e].shards |= {shard_name(u) for u in spec.epoch_shards(e, role)}
            if offset > 0 and epoch <= hi:
                out[epoch].update(stream.consumed_samples(role, epoch, offset))
    return {e: c for e, c in out.items() if c}


def check_fingerprints(states: list[dict[str, Any]], fingerprint: dict[str, Any]) -> None:
    for key, value in fingerprint.items():
        old = states[0]["fingerprint"].get(key)
        if key not in ELASTIC_KEYS and old != value:
            raise DataError(f"cannot remap the data position to the new world size: {key} was {old!r}, now "
                            f"{value!r} (keep it, or start without the saved data state)")


def remap(states: list[dict[str, Any]], fingerprint: dict[str, Any], spec: StreamSpec) -> Remap:
    """Where the roles of ``spec``'s rank start, given every rank's state of another world's checkpoint."""
    check_fingerprints(states, fingerprint)
    record = world_record(states)
    old = (record["world_size"], record["num_workers"])
    if spec.resampled:
        epoch = max(e for roles in record["positions"] for e, _ in roles) + 1
        return Remap([(epoch, 0)] * spec.roles, {}, None, old, epoch)
    consumed = consumed_by(record, spec)
    epoch = first_epoch(record)
    return Remap([(epoch, 0)] * spec.roles, consumed, record, old, epoch)
