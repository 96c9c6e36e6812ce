"""The eval loader: one pass, no shuffling, every sample exactly once across ranks."""

from __future__ import annotations

import pytest

from corefm.data import DataConfig, build_eval_loader

from _data_helpers import indices, map_index, write_shards


@pytest.mark.parametrize("world_size,num_workers", [(3, 2), (10, 2), (2, 0)])
def test_eval_sees_every_sample_once(shard_spec, world_size, num_workers):
    cfg = DataConfig(num_workers=num_workers)
    seen, partial = [], False
    for rank in range(world_size):
        loader = build_eval_loader(shard_spec, cfg, rank=rank, world_size=world_size, batch_size=7, map_fn=map_index)
        first = list(loader)
        again = list(loader)  # each iteration is a fresh, identical pass
        assert indices(first) == indices(again)
        partial |= any(len(b["idx"]) < 7 for b in first)
        seen += indices(first)
        assert loader.num_samples == 25 * len(range(rank, 8, world_size))
    assert sorted(seen) == list(range(200))
    assert partial  # last partial batches are kept


def test_eval_on_a_split_of_a_directory(tmp_path):
    out = str(tmp_path / "set")
    write_shards(out, num_shards=4, per_shard=10)
    write_shards(out, num_shards=2, per_shard=5, prefix="val", start=500)
    loader = build_eval_loader(out + "#val", DataConfig(num_workers=2), rank=0, world_size=1, batch_size=4, map_fn=map_index)
    assert sorted(indices(list(loader))) == list(range(500, 510))
    assert loader.num_samples == 10
