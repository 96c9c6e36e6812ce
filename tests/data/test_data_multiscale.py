"""Variable-batch multi-scale sampling (corefm.data.multiscale) over the shard stream: the same side on
every rank each step, pixels per batch near constant, and exact resume with 2 ranks x 2 workers."""

from __future__ import annotations

import json

import pytest
import torch

from corefm.data import DataConfig, DataError, build_loader, decode_sample

from _data_helpers import assert_same_batches

SIDES, BASE, BATCH = [4, 8, 12], 8, 6
TOTAL = 24


def map_image(raw: dict) -> dict:
    sample = decode_sample(raw, {"cls"})
    # a random "augmentation" through the global torch RNG, which the loader seeds per batch
    return {"idx": sample["cls"], "image": torch.rand(1, 8, 8)}


def _loader(spec, cfg, rank, state=None, per_step=1):
    return build_loader(spec, cfg, rank=rank, world_size=2, batch_size=BATCH, map_fn=map_image, state=state,
                        batches_per_step=per_step)


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def _cfg(**kw) -> DataConfig:
    return DataConfig(num_workers=2, shuffle_buffer=10, seed=3, scales=SIDES, scale_base=BASE, **kw)


@pytest.mark.parametrize("per_step", [1, 2])
def test_every_rank_takes_the_same_side_and_a_batch_that_keeps_pixels(shard_spec, per_step):
    ranks = []
    for rank in (0, 1):
        loader = _loader(shard_spec, _cfg(), rank, per_step=per_step)
        ranks.append(_take(loader, TOTAL))
        loader.close()
    sides = [[b["image"].shape[-1] for b in batches] for batches in ranks]
    assert sides[0] == sides[1]  # both ranks, step by step
    assert set(sides[0]) == set(SIDES)  # the draw visits every side
    for batches in ranks:
        for b in batches:
            side = b["image"].shape[-1]
            assert b["image"].shape == (BATCH * BASE**2 // side**2, 1, side, side)
            assert len(b["idx"]) == len(b["image"])
    if per_step == 2:  # the micro-batches of one optimizer step share the side
        assert all(sides[0][i] == sides[0][i + 1] for i in range(0, TOTAL, 2))
    # the changing batch sizes neither lose nor repeat samples: rank 0's 100 samples a epoch, read for
    # a little under two epochs (each role drops at most one partial batch per epoch)
    seen = [i for b in ranks[0] for i in b["idx"].tolist()]
    counts = torch.bincount(torch.tensor(seen))
    assert 100 < len(seen) < 200 and int(counts.max()) <= 2 and int((counts > 0).sum()) >= 100 - 2 * 2 * BATCH * 4


def test_exact_resume_two_ranks_two_workers(shard_spec):
    cfg = _cfg()
    for rank in (0, 1):
        full_loader = _loader(shard_spec, cfg, rank)
        full = _take(full_loader, TOTAL)
        final_state = full_loader.state_dict()
        full_loader.close()
        for k in (3, 10, 17):  # odd k rotates the worker roles
            first = _loader(shard_spec, cfg, rank)
            head = _take(first, k)
            state = json.loads(json.dumps(first.state_dict()))
            first.close()  # the "kill": the workers are gone, only the state survives
            resumed = _loader(shard_spec, cfg, rank, state)
            assert_same_batches(head + _take(resumed, TOTAL - k), full)
            assert resumed.state_dict() == final_state
            resumed.close()


def test_resume_with_other_scales_is_refused(shard_spec):
    loader = _loader(shard_spec, _cfg(), 0)
    _take(loader, 2)
    state = loader.state_dict()
    loader.close()
    with pytest.raises(DataError, match="scales"):
        _loader(shard_spec, DataConfig(num_workers=2, shuffle_buffer=10, seed=3, scales=[4, 8], scale_base=BASE),
                0, state)


def test_bad_settings_are_one_line_errors(shard_spec):
    with pytest.raises(DataError, match="data.scale_base"):
        _loader(shard_spec, DataConfig(num_workers=0, scales=[4, 8]), 0)
    with pytest.raises(DataError, match="mix: batch"):
        _loader(shard_spec + "::" + shard_spec, DataConfig(num_workers=0, scales=[4], scale_base=4, mix="batch",
                                                          resampled=True, weights=[1, 1]), 0)
    loader = _loader(shard_spec, DataConfig(num_workers=0, scales=[4], scale_base=4, scale_key="idx"), 0)
    with pytest.raises(DataError, match=r"batch\['idx'\], which must be float images"):
        next(loader)
