"""Webdataset streaming: shard specs, manifests, shard writing, decoding, resumable loaders."""

from corefm.data.config import DataConfig
from corefm.data.decode import decode_sample
from corefm.data.errors import DataError, SkipSample, one_line
from corefm.data.loader import EvalLoader, ResumableLoader, build_eval_loader, build_loader
from corefm.data.manifest import (
    Manifest,
    ShardInfo,
    check_shards,
    load_manifest,
    manifest_classes,
    verify,
    write_manifest,
)
from corefm.data.urls import expand_sources, expand_urls
from corefm.data.writer import ShardWriter, write_split

__all__ = [
    "DataConfig",
    "DataError",
    "EvalLoader",
    "Manifest",
    "ResumableLoader",
    "ShardInfo",
    "ShardWriter",
    "SkipSample",
    "build_eval_loader",
    "build_loader",
    "check_shards",
    "decode_sample",
    "expand_sources",
    "expand_urls",
    "load_manifest",
    "manifest_classes",
    "one_line",
    "verify",
    "write_manifest",
    "write_split",
]
