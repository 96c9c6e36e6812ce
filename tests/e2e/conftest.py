"""Fixtures for end-to-end runs: real digits shards built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    from corefm.data.image_sets import build

    out = tmp_path_factory.mktemp("digits")
    build("digits", out, train_shards=8, val_shards=4)
    return out


