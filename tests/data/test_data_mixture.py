"""data.mix: batch: a fixed number of samples of each source in every batch, each source streaming
its own epochs, resumable exactly and across world sizes."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from corefm.data import DataConfig, DataError, build_loader
from corefm.data.mixture import split_batch

from _data_helpers import NUM_SHARDS, PER_SHARD, assert_same_batches, indices, map_index, write_shards

BIG = 100_000  # the second source's sample ids start here


@pytest.fixture
def two_sources(tmp_path) -> str:
    a = write_shards(str(tmp_path / "a"))
    b = write_shards(str(tmp_path / "b"), num_shards=4, per_shard=20, start=BIG)
    return f"{a}::{b}"


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"mix": "batch", "weights": [3, 1], "num_workers": 2, "shuffle_buffer": 10, "seed": 1, **kw})


def _loaders(spec, cfg, world, batch=8, state=None, world_state=None):
    return [build_loader(spec, cfg, rank=r, world_size=world, batch_size=batch, map_fn=map_index,
                         state=state[r] if state else None, world_state=world_state) for r in range(world)]


def _states(loaders):
    states = [json.loads(json.dumps(ld.state_dict())) for ld in loaders]  # as through a checkpoint
    for ld in loaders:
        ld.close()
    return states


def test_split_batch():
    assert split_batch(8, [3, 1]) == [6, 2] and split_batch(7, [1, 1]) == [4, 3] and split_batch(32, [1, 1, 2]) == [8, 8, 16]
    with pytest.raises(DataError, match="cannot hold every source"):
        split_batch(4, [100, 1])


def test_every_batch_holds_the_fixed_share_of_each_source(two_sources):
    (loader,) = _loaders(two_sources, _cfg(), 1)  # one worker per source
    batches = [next(loader) for _ in range(40)]
    for b in batches:
        ids = b["idx"].tolist()
        assert sum(i < BIG for i in ids) == 6 and sum(i >= BIG for i in ids) == 2
    # each source runs its own epochs: after 40 batches the small one (80 samples, 2 a batch) has
    # gone through exactly once, while the big one (200 samples, 6 a batch: 33 batches, the last 2
    # samples dropped) finished its first epoch after 33 batches
    ids = indices(batches)
    small = Counter(i for i in ids if i >= BIG)
    assert sorted(small) == list(range(BIG, BIG + 80)) and set(small.values()) == {1}
    big_epoch0 = [i for b in batches[:33] for i in b["idx"].tolist() if i < BIG]
    assert len(set(big_epoch0)) == len(big_epoch0) == 198
    loader.close()


def test_resume_is_exact_with_two_ranks(two_sources):
    straight = _loaders(two_sources, _cfg(), 2)
    want = [[next(ld) for _ in range(12)] for ld in straight]
    _states(straight)
    first = _loaders(two_sources, _cfg(), 2)
    head = [[next(ld) for _ in range(5)] for ld in first]
    again = _loaders(two_sources, _cfg(), 2, state=_states(first))
    for r, ld in enumerate(again):
        assert_same_batches(head[r] + [next(ld) for _ in range(7)], want[r])
    _states(again)


def test_another_world_size_sees_every_sample_of_each_source_once(two_sources):
    """2 ranks x (1 worker per source) -> 1 rank in the main process, mid-epoch: each source's epoch in
    progress goes on without repeating or skipping a sample."""
    a = _loaders(two_sources, _cfg(), 2)
    seen = [b for ld in a for b in [next(ld) for _ in range(3)]]
    (b,) = _loaders(two_sources, _cfg(num_workers=0), 1, world_state=_states(a))
    assert "source 0: data: epoch 0 continues without" in b.remapped and "source 1:" in b.remapped
    big, small = b.loaders
    while min(e for e, _ in small.positions) == 0 or min(e for e, _ in big.positions) == 0:
        seen.append(next(b))
    b.close()
    ids = indices(seen)
    small_ids = Counter(i for i in ids if i >= BIG)
    assert set(range(BIG, BIG + 80)) == set(small_ids)  # every sample of the small source's epoch 0
    big_ids = Counter(i for i in ids if i < BIG)
    assert len(big_ids) >= NUM_SHARDS * PER_SHARD - 8  # all of epoch 0 but partial batches dropped
    # nothing of an epoch twice before the other epoch started: repeats only from epoch 1 on
    first_small = [i for i in ids if i >= BIG][:len(small_ids)]
    assert len(set(first_small)) == len(first_small)


def test_mistakes_are_one_line(two_sources):
    with pytest.raises(DataError, match="one data.weights entry each"):
        _loaders(two_sources, _cfg(weights=[1]), 1)
    with pytest.raises(DataError, match="at least one per source"):
        _loaders(two_sources, _cfg(num_workers=1), 1)
    plain = build_loader(two_sources, DataConfig(num_workers=0), rank=0, world_size=1, batch_size=8, map_fn=map_index)
    next(plain)
    with pytest.raises(DataError, match="not of a 2-source data.mix: batch"):
        _loaders(two_sources, _cfg(), 1, state=[plain.state_dict()])
