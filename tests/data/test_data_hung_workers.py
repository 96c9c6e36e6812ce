"""Hung data workers (a deadlock after fork, a stalled read) are restarted at the exact position:
the batches that follow are those of a run whose workers never hung; past the bound, one error."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from corefm.data import DataConfig, DataError, build_eval_loader, build_loader

from _data_helpers import assert_same_batches, map_index


class HangOnce:
    """map_index, except that the first worker process to reach sample ``index`` sleeps (forever, for
    the test) the first ``times`` times, claimed through files in ``flag_dir``."""

    def __init__(self, flag_dir: str, index: int, times: int = 1) -> None:
        self.flag_dir, self.index, self.times = flag_dir, index, times

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        out = map_index(raw)
        if out["idx"] == self.index:
            for n in range(self.times):
                try:
                    os.close(os.open(os.path.join(self.flag_dir, f"hung{n}"), os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    continue
                time.sleep(3600)
        return out


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def test_train_loader_restarts_hung_workers_exactly(shard_spec, tmp_path, capfd):
    cfg = DataConfig(num_workers=2, shuffle_buffer=10, seed=3)
    loader = build_loader(shard_spec, cfg, rank=0, world_size=2, batch_size=4, map_fn=map_index)
    want = _take(loader, 20)
    loader.close()
    hung = DataConfig(num_workers=2, shuffle_buffer=10, seed=3, worker_timeout=2)
    index = int(want[9]["idx"][1])  # a sample in the middle of the run
    loader = build_loader(shard_spec, hung, rank=0, world_size=2, batch_size=4, map_fn=HangOnce(str(tmp_path), index))
    got = _take(loader, 20)
    loader.close()
    assert_same_batches(got, want)
    err = capfd.readouterr().err
    assert "delivered no batch for 2 s; restarted them at the same position (restart 1 of at most 3)" in err


def test_eval_loader_restarts_and_skips_what_it_delivered(shard_spec, tmp_path):
    def batches(cfg, fn):
        return list(build_eval_loader(shard_spec, cfg, rank=1, world_size=2, batch_size=4, map_fn=fn))

    want = batches(DataConfig(num_workers=2), map_index)
    index = int(want[len(want) // 2]["idx"][0])
    got = batches(DataConfig(num_workers=2, worker_timeout=2), HangOnce(str(tmp_path), index))
    assert_same_batches(got, want)


def test_workers_that_keep_hanging_end_in_one_error(shard_spec, tmp_path, monkeypatch):
    monkeypatch.setattr("corefm.data.loader.MAX_WORKER_RESTARTS", 1)  # the bound's logic, at less waiting
    cfg = DataConfig(num_workers=1, shuffle_buffer=0, worker_timeout=1)
    loader = build_loader(shard_spec, cfg, rank=0, world_size=1, batch_size=4,
                          map_fn=HangOnce(str(tmp_path), index=2, times=2))
    with pytest.raises(DataError, match=r"no batch for 1 s, 1 restarts in a row \(raise data.worker_timeout"):
        _take(loader, 50)  # more than one epoch: sample 2 is in one of these batches
    loader.close()
    with pytest.raises(DataError, match="worker_timeout must be >= 0"):
        build_loader(shard_spec, DataConfig(worker_timeout=-1), rank=0, world_size=1, batch_size=4, map_fn=map_index)
