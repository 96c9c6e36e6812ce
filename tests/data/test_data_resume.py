"""Exact resume: k batches + a loader rebuilt from state_dict() == the uninterrupted run."""

from __future__ import annotations

import json

import pytest

from corefm.data import DataConfig, DataError, build_loader

from _data_helpers import assert_same_batches, map_index

TOTAL = 30


def _loader(spec, cfg, rank, state=None):
    return build_loader(spec, cfg, rank=rank, world_size=2, batch_size=4, map_fn=map_index, state=state)


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def _check_resume(spec, cfg, ks):
    for rank in (0, 1):
        full_loader = _loader(spec, cfg, rank)
        full = _take(full_loader, TOTAL)
        final_state = full_loader.state_dict()
        full_loader.close()
        for k in ks:
            first = _loader(spec, cfg, rank)
            head = _take(first, k)
            # the state goes through JSON as it would through a checkpoint
            state = json.loads(json.dumps(first.state_dict()))
            first.close()
            resumed = _loader(spec, cfg, rank, state)
            tail = _take(resumed, TOTAL - k)
            assert_same_batches(head + tail, full)
            assert resumed.state_dict() == final_state
            resumed.close()


# Per rank, 2 roles each read 2 shards (50 samples = 12 batches of 4, 2 dropped) per epoch, so
# batches 0..23 are epoch 0; k=24 stops exactly at the boundary, 25 and 27 resume inside epoch 1
# (27 with odd k also rotates the worker roles).
@pytest.mark.parametrize("resampled", [False, True], ids=["plain", "resampled"])
def test_exact_resume_two_workers_two_ranks(shard_spec, resampled):
    cfg = DataConfig(num_workers=2, shuffle_buffer=10, seed=7, resampled=resampled)
    _check_resume(shard_spec, cfg, ks=[3, 13, 24, 27])


@pytest.mark.parametrize("resampled", [False, True], ids=["plain", "resampled"])
def test_exact_resume_in_main_process(shard_spec, resampled):
    # one role per rank reads 4 shards = 25 batches per epoch
    cfg = DataConfig(num_workers=0, shuffle_buffer=10, seed=1, resampled=resampled)
    _check_resume(shard_spec, cfg, ks=[6, 25, 26])


def test_resume_twice_and_restart_after_close(shard_spec):
    cfg = DataConfig(num_workers=2, shuffle_buffer=10, seed=2)
    full = _take(_loader(shard_spec, cfg, 1), TOTAL)
    a = _loader(shard_spec, cfg, 1)
    got = _take(a, 9)
    b = _loader(shard_spec, cfg, 1, a.state_dict())
    got += _take(b, 14)
    b.close()  # stops the workers; next() restarts them at the current position
    got += _take(b, 3)
    c = _loader(shard_spec, cfg, 1, b.state_dict())
    got += _take(c, TOTAL - 26)
    assert_same_batches(got, full)
    for loader in (a, b, c):
        loader.close()


def test_resume_with_other_settings_is_refused(shard_spec):
    cfg = DataConfig(num_workers=2, shuffle_buffer=10)
    loader = _loader(shard_spec, cfg, 0)
    _take(loader, 3)
    state = loader.state_dict()
    loader.close()
    with pytest.raises(DataError, match="num_workers was 2, now 1"):
        _loader(shard_spec, DataConfig(num_workers=1, shuffle_buffer=10), 0, state)
    assert state["batches"] == 3 and len(state["positions"]) == 2
