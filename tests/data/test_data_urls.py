"""Shard specs: brace patterns, lists, sources, manifest directories, missing files."""

from __future__ import annotations

import os

import pytest

from corefm.data import DataError, expand_sources, expand_urls
from corefm.data.urls import split_top_level


def test_brace_expansion_of_local_and_remote(shard_dir, shard_spec):
    urls = expand_urls(shard_spec)
    assert urls == [os.path.join(shard_dir, f"train-{i:06d}.tar") for i in range(8)]
    assert expand_urls("https://host/x-{0..2}.tar") == [f"https://host/x-{i}.tar" for i in range(3)]
    assert expand_urls("pipe:cat /nowhere/a-{0,1}.tar") == ["pipe:cat /nowhere/a-0.tar", "pipe:cat /nowhere/a-1.tar"]


def test_lists_and_sources(shard_dir):
    a = os.path.join(shard_dir, "train-{000000,000001}.tar")
    b = os.path.join(shard_dir, "train-000005.tar")
    assert len(expand_urls(f"{a}, {b}")) == 3
    sources = expand_sources(f"{a}::{b}")
    assert [len(s) for s in sources] == [2, 1]
    assert split_top_level("x{a,b},y::z", ",") == ["x{a,b}", "y::z"]


def test_directory_reads_manifest(shard_dir):
    urls = expand_urls(shard_dir)
    assert [os.path.basename(u) for u in urls] == [f"train-{i:06d}.tar" for i in range(8)]
    assert expand_urls(shard_dir + "#train") == urls
    assert expand_urls(os.path.join(shard_dir, "dataset.json")) == urls
    assert len(expand_urls(os.path.join(os.path.dirname(shard_dir), "{shards,shards}"))) == 16
    with pytest.raises(DataError, match="no split 'val'"):
        expand_urls(shard_dir + "#val")


def test_errors_name_the_problem(tmp_path, shard_dir):
    with pytest.raises(DataError, match=r"shard not found: .*train-000008\.tar \(and 1 more of 10\)"):
        expand_urls(os.path.join(shard_dir, "train-{000000..000009}.tar"))
    with pytest.raises(DataError, match="has no dataset.json"):
        expand_urls(str(tmp_path))
    with pytest.raises(DataError, match="empty"):
        expand_urls("")
