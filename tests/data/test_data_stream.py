"""Coverage, determinism, resampling and sample skipping of the training stream."""

from __future__ import annotations

import pytest
import torch

from corefm.data import DataConfig, DataError, SkipSample, build_loader
from corefm.data.stream import StreamSpec

from _data_helpers import assert_same_batches, indices, map_index, write_shards


def take(loader, n):
    batches = [next(loader) for _ in range(n)]
    loader.close()
    return batches


def test_every_sample_once_per_epoch_across_ranks_and_workers(shard_spec):
    # 8 shards x 25 samples, 2 ranks x 2 workers: each role reads 2 shards = 10 batches of 5 per
    # epoch, so each rank's first 20 batches are its epoch 0 and the next 20 its epoch 1
    cfg = DataConfig(num_workers=2, shuffle_buffer=16, seed=3)
    per_epoch = {0: [], 1: []}
    for rank in (0, 1):
        loader = build_loader(shard_spec, cfg, rank=rank, world_size=2, batch_size=5, map_fn=map_index)
        batches = take(loader, 40)
        per_epoch[0] += indices(batches[:20])
        per_epoch[1] += indices(batches[20:])
        assert loader.state_dict()["positions"] == [[1, 50], [1, 50]]
    for seen in per_epoch.values():
        assert sorted(seen) == list(range(200))
    assert per_epoch[0] != per_epoch[1]  # shards are re-permuted and re-shuffled per epoch


def test_plain_epoch_assignment_partitions_shards():
    urls = [f"s{i}" for i in range(13)]
    for epoch in range(3):
        got = []
        for rank in range(2):
            for role in range(3):
                spec = StreamSpec(urls=urls, rank=rank, world_size=2, num_workers=3, batch_size=1, seed=5)
                got += spec.epoch_shards(epoch, role)
        assert sorted(got) == sorted(urls)


def test_same_seed_same_order_other_seed_other_order(shard_spec):
    def run(seed):
        cfg = DataConfig(num_workers=2, shuffle_buffer=20, seed=seed)
        return take(build_loader(shard_spec, cfg, rank=1, world_size=2, batch_size=4, map_fn=map_index), 12)

    first, again, other = run(0), run(0), run(1)
    assert_same_batches(first, again)
    assert indices(first) != indices(other)


def test_resampled_weights_pick_sources(tmp_path):
    a = write_shards(str(tmp_path / "a"), num_shards=4, per_shard=10)
    b = write_shards(str(tmp_path / "b"), num_shards=4, per_shard=10, start=1000)
    spec = f"{a}::{b}"
    cfg = DataConfig(num_workers=2, resampled=True, weights=[0.0, 1.0], shuffle_buffer=8)
    seen = indices(take(build_loader(spec, cfg, rank=0, world_size=1, batch_size=5, map_fn=map_index), 20))
    assert seen and all(i >= 1000 for i in seen)
    cfg.weights = [1.0, 1.0]
    seen = indices(take(build_loader(spec, cfg, rank=0, world_size=1, batch_size=5, map_fn=map_index), 40))
    assert any(i < 1000 for i in seen) and any(i >= 1000 for i in seen)
    with pytest.raises(DataError, match="2 '::'-separated sources"):
        build_loader(spec, DataConfig(resampled=True, weights=[1.0]), rank=0, world_size=1, batch_size=5, map_fn=map_index)
    with pytest.raises(DataError, match="needs data.resampled"):
        build_loader(spec, DataConfig(weights=[1.0, 1.0]), rank=0, world_size=1, batch_size=5, map_fn=map_index)


def test_too_few_shards_for_plain_epochs(shard_spec):
    with pytest.raises(DataError, match="8 shards cannot feed 5 ranks x 2 workers: plain epochs need at least 10"):
        build_loader(shard_spec, DataConfig(num_workers=2), rank=0, world_size=5, batch_size=2, map_fn=map_index)
    # resampled mode draws with replacement and has no such bound
    loader = build_loader(shard_spec, DataConfig(num_workers=2, resampled=True), rank=4, world_size=5, batch_size=2, map_fn=map_index)
    assert len(take(loader, 4)) == 4


def test_skipped_samples_are_counted_under_the_bound(shard_spec):
    def picky(raw):
        sample = map_index(raw)
        if sample["idx"] % 10 == 0:
            raise SkipSample("caption too short")
        if sample["idx"] % 10 == 5:
            int("abc")  # a sample's bad value (ValueError) is skipped like SkipSample
        return sample

    cfg = DataConfig(num_workers=2, shuffle_buffer=0, max_skip_fraction=0.25)
    loader = build_loader(shard_spec, cfg, rank=0, world_size=1, batch_size=5, map_fn=picky)
    # each of the 2 roles reads 4 shards (100 samples, 80 kept) = 16 batches in epoch 0
    seen = indices([next(loader) for _ in range(32)])
    assert all(i % 5 for i in seen) and len(set(seen)) == 160
    assert loader.stats()["skipped_samples"] >= 40
    loader.close()
    # 20% unusable against the default bound of 5%: one line naming the last one and why
    loader = build_loader(shard_spec, DataConfig(num_workers=0, shuffle_buffer=0), rank=0, world_size=1,
                          batch_size=5, map_fn=picky)
    with pytest.raises(DataError, match=r"6 of \d+ samples unusable \(bound 5%\); the last: sample sample\d+ of .*"
                                        r"(caption too short|ValueError: invalid literal)"):
        [next(loader) for _ in range(40)]


def test_a_data_config_error_inside_map_fn_stops_the_run(shard_spec):
    def misconfigured(raw):
        raise DataError("task.prompts is 4 but the shards store 2")

    loader = build_loader(shard_spec, DataConfig(num_workers=0), rank=0, world_size=1, batch_size=5, map_fn=misconfigured)
    with pytest.raises(DataError, match="task.prompts is 4"):
        next(loader)


def test_main_process_stream_leaves_global_rng_alone(shard_spec):
    loader = build_loader(shard_spec, DataConfig(num_workers=0), rank=0, world_size=1, batch_size=5, map_fn=map_index)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    next(loader)
    assert torch.equal(torch.rand(3), expected)


def test_map_fn_data_error_reaches_main_process_as_one_line(shard_spec):
    def strict(raw):
        raise DataError("caption key 'txt' missing in sample shard/xyz")

    loader = build_loader(shard_spec, DataConfig(num_workers=2), rank=0, world_size=1, batch_size=5, map_fn=strict)
    with pytest.raises(DataError) as info:
        next(loader)
    assert str(info.value) == "caption key 'txt' missing in sample shard/xyz"


def test_batch_larger_than_an_epoch_is_an_error(shard_spec):
    loader = build_loader(shard_spec, DataConfig(num_workers=2), rank=0, world_size=2, batch_size=60, map_fn=map_index)
    with pytest.raises(DataError, match="not one batch of 60"):
        next(loader)
