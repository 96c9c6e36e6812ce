"""Fixtures of the data tests (helpers live in _data_helpers.py)."""

from __future__ import annotations

import os

import pytest

from _data_helpers import write_shards


@pytest.fixture
def shard_dir(tmp_path) -> str:
    return write_shards(str(tmp_path / "shards"))


@pytest.fixture
def shard_spec(shard_dir) -> str:
    return os.path.join(shard_dir, "train-{000000..000007}.tar")
