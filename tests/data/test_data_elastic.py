"""Resume at another world size: 2 ranks x 2 workers -> 1 rank -> 2 ranks x 1 worker within one
epoch; counting sample ids, the epoch is seen exactly once, and the next epoch too."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from corefm.data import DataConfig, DataError, build_loader

from _data_helpers import NUM_SHARDS, PER_SHARD, assert_same_batches, map_index

TOTAL = NUM_SHARDS * PER_SHARD


def _world(spec, cfg, world, states=None, state=None):
    return [build_loader(spec, cfg, rank=r, world_size=world, batch_size=4, map_fn=map_index, drop_last=False,
                         world_state=states, state=state[r] if state else None) for r in range(world)]


def _take(loader, n):
    """n batches as (epoch, batch): the epoch is that of the role whose position moved."""
    out = []
    for _ in range(n):
        before = [list(p) for p in loader.positions]
        batch = next(loader)
        moved = [p for p, b in zip(loader.positions, before) if p != b]
        out.append((moved[0][0], batch))
    return out


def _states(loaders):
    # through JSON, as through a checkpoint
    states = [json.loads(json.dumps(loader.state_dict())) for loader in loaders]
    for loader in loaders:
        loader.close()
    return states


def _ids(taken, epoch):
    return [i for e, b in taken if e == epoch for i in b["idx"].tolist()]


def _until_epoch(loader, epoch, limit=200):
    """Batches until every role's position is past ``epoch`` (one more epoch's worth at most)."""
    out = []
    while min(e for e, _ in loader.positions) <= epoch:
        out += _take(loader, 1)
        assert len(out) < limit
    return out


def test_two_to_one_to_two_sees_every_sample_of_the_epoch_once(shard_spec):
    wide = DataConfig(num_workers=2, shuffle_buffer=10, seed=3)
    one = DataConfig(num_workers=0, shuffle_buffer=10, seed=3)
    narrow = DataConfig(num_workers=1, shuffle_buffer=10, seed=3)
    seen: list[tuple[int, dict]] = []
    a = _world(shard_spec, wide, 2)
    seen += _take(a[0], 7) + _take(a[1], 5)  # uneven: rank 1 was behind when the job ended
    b = _world(shard_spec, one, 1, states=_states(a))
    assert "epoch 0 continues without" in b[0].remapped and "2 ranks x 2 roles" in b[0].remapped
    seen += _take(b[0], 9)
    c_states = _states(b)
    c = _world(shard_spec, narrow, 2, states=c_states)
    for loader in c:
        seen += _until_epoch(loader, 0)
    counts = Counter(_ids(seen, 0))
    assert sorted(counts) == list(range(TOTAL)), f"missing: {sorted(set(range(TOTAL)) - set(counts))}"
    assert set(counts.values()) == {1}, f"repeated: {[i for i, n in counts.items() if n > 1]}"
    # epoch 1 runs plain in the new world: every role passes it once; the record is dropped then
    more = []
    for loader in c:
        more += _until_epoch(loader, 1)
    assert Counter(_ids(seen + more, 1)) == Counter(range(TOTAL))
    assert all(loader.state_dict()["history"] is None for loader in c)
    _states(c)


def test_same_size_resume_inside_a_remapped_epoch_is_exact(shard_spec):
    cfg = DataConfig(num_workers=2, shuffle_buffer=10, seed=5)
    a = _world(shard_spec, cfg, 2)
    for loader in a:
        _take(loader, 6)
    old = _states(a)
    full_world = _world(shard_spec, DataConfig(num_workers=0, shuffle_buffer=10, seed=5), 1, states=old)
    full = [b for _, b in _take(full_world[0], 20)]
    _states(full_world)
    first = _world(shard_spec, DataConfig(num_workers=0, shuffle_buffer=10, seed=5), 1, states=old)
    head = [b for _, b in _take(first[0], 8)]
    state = _states(first)
    assert state[0]["history"]["world_size"] == 2
    again = _world(shard_spec, DataConfig(num_workers=0, shuffle_buffer=10, seed=5), 1, state=state)
    tail = [b for _, b in _take(again[0], 12)]
    assert_same_batches(head + tail, full)
    _states(again)


def test_a_remap_refuses_another_order(shard_spec):
    a = _world(shard_spec, DataConfig(num_workers=0, seed=1), 2)
    for loader in a:
        _take(loader, 2)
    with pytest.raises(DataError, match="seed was 1, now 2"):
        _world(shard_spec, DataConfig(num_workers=0, seed=2), 1, states=_states(a))


def test_a_resampled_stream_moves_to_the_next_epoch(shard_spec):
    cfg = DataConfig(num_workers=0, seed=1, resampled=True)
    a = _world(shard_spec, cfg, 2)
    for loader in a:
        _take(loader, 3)
    b = _world(shard_spec, cfg, 1, states=_states(a))
    assert b[0].positions == [[1, 0]] and "resampled" in b[0].remapped
    _states(b)
