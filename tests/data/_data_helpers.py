"""Helpers of the data tests: tiny shard sets written with ShardWriter, a map_fn, comparisons."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from corefm.data import ShardWriter, decode_sample

NUM_SHARDS, PER_SHARD = 8, 25


def write_shards(out_dir: str, num_shards: int = NUM_SHARDS, per_shard: int = PER_SHARD, prefix: str = "train", start: int = 0) -> str:
    """num_shards x per_shard samples; sample i (global index start+i) has cls=i, txt, npy."""
    with ShardWriter(out_dir, prefix=prefix, num_shards=num_shards, producer={"name": "tests", "version": "0", "args": {}}) as writer:
        for i in range(start, start + num_shards * per_shard):
            writer.write({
                "__key__": f"sample{i:06d}",
                "cls": i,
                "txt": f"caption of sample {i}",
                "npy": np.arange(4, dtype=np.float32) + i,
            })
    return out_dir


def map_index(raw: dict[str, Any]) -> dict[str, Any]:
    """Decode cls/npy; `noise` stands in for a random augmentation (global torch RNG)."""
    sample = decode_sample(raw, {"cls", "npy"})
    return {"idx": sample["cls"], "npy": torch.from_numpy(sample["npy"]), "noise": torch.rand(2)}


def indices(batches: list[dict[str, Any]]) -> list[int]:
    return [i for b in batches for i in b["idx"].tolist()]


def assert_same_batches(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key
