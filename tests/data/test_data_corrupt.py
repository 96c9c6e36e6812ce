"""Unreadable shards: skipped and counted within the bound, one-line DataError beyond it."""

from __future__ import annotations

import http.server
import logging
import os
import shutil
import tarfile
import threading
from functools import partial

import pytest

from corefm.data import DataConfig, DataError, build_loader, expand_urls, one_line
from corefm.data.shards import ShardReadError, iter_shard
from corefm.errors import CorefmError

from _data_helpers import indices, map_index

BAD = "train-000003.tar"  # holds samples i with i % 8 == 3 (ShardWriter deals round-robin)


def _truncate(path, size=None):
    with open(path, "r+b") as f:
        f.truncate(size if size is not None else os.path.getsize(path) // 2)


def test_truncated_shard_is_skipped_and_counted(shard_dir, shard_spec):
    _truncate(os.path.join(shard_dir, BAD))
    cfg = DataConfig(num_workers=2, shuffle_buffer=0, check_manifest=False, max_skip_fraction=0.5)
    # drop_last=False: the role with the cut shard ends its epoch with a partial batch
    loader = build_loader(shard_spec, cfg, rank=0, world_size=1, batch_size=5, map_fn=map_index, drop_last=False)
    seen = set(indices([next(loader) for _ in range(40)]))  # covers epoch 0 of both roles
    loader.close()
    assert {i for i in range(200) if i % 8 != 3} <= seen  # the other shards are all read
    from_bad = {i for i in seen if i % 8 == 3}
    assert 0 < len(from_bad) < 25  # samples before the cut are yielded, the rest is lost
    assert loader.stats()["skipped_shards"] >= 1


def test_skip_is_logged_in_one_line(shard_dir, shard_spec, caplog):
    _truncate(os.path.join(shard_dir, BAD))
    cfg = DataConfig(num_workers=0, check_manifest=False, max_skip_fraction=0.5)
    loader = build_loader(shard_spec, cfg, rank=0, world_size=1, batch_size=5, map_fn=map_index)
    with caplog.at_level(logging.WARNING, logger="corefm.data"):
        for _ in range(45):  # one epoch of the single role
            next(loader)
    lines = [r.getMessage() for r in caplog.records if BAD in r.getMessage()]
    assert lines and "\n" not in lines[0] and lines[0].startswith("skipping unreadable shard")


def test_manifest_size_check_stops_before_streaming(shard_dir, shard_spec):
    _truncate(os.path.join(shard_dir, BAD))
    with pytest.raises(DataError, match=f"shard .*{BAD} has \\d+ bytes but"):
        build_loader(shard_spec, DataConfig(), rank=0, world_size=1, batch_size=5, map_fn=map_index)


@pytest.mark.parametrize("num_workers", [2, 0])
def test_many_bad_shards_stop_the_run_with_one_line(shard_dir, shard_spec, num_workers):
    for i in (1, 3, 4, 6):  # same size, garbage content: passes the cheap manifest check
        path = os.path.join(shard_dir, f"train-{i:06d}.tar")
        size = os.path.getsize(path)
        with open(path, "wb") as f:
            f.write(b"\x13" * size)
    cfg = DataConfig(num_workers=num_workers)
    loader = build_loader(shard_spec, cfg, rank=0, world_size=1, batch_size=5, map_fn=map_index)
    with pytest.raises(DataError) as info:
        for _ in range(100):
            next(loader)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ValueError)
    assert "shards unreadable (bound 5%): last was " in message
    assert any(f"train-{i:06d}.tar: " in message for i in (1, 3, 4, 6))


def test_cut_at_a_member_boundary_is_detected(shard_dir):
    path = os.path.join(shard_dir, "train-000000.tar")
    with tarfile.open(path) as tar:
        cut = tar.getmembers()[30].offset  # header of the 11th sample (3 members per sample)
    _truncate(path, cut)
    got = []
    with pytest.raises(ShardReadError, match="truncated or corrupt tar"):
        for sample in iter_shard(path):
            got.append(sample["__key__"])
    # the 10th sample is complete, but at the fault the reader cannot know that no member of it
    # follows, so the sample in progress is dropped
    assert len(got) == 9


def test_sample_count_must_match_the_manifest(shard_dir):
    path = os.path.join(shard_dir, "train-000000.tar")
    assert len(list(iter_shard(path, expected_samples=25))) == 25
    with pytest.raises(ShardReadError, match="has 25 samples, the manifest says 26"):
        list(iter_shard(path, expected_samples=26))


def test_missing_local_file_names_it(shard_dir, shard_spec):
    os.remove(os.path.join(shard_dir, "train-000005.tar"))
    with pytest.raises(DataError, match=r"shard not found: .*train-000005\.tar"):
        build_loader(shard_spec, DataConfig(), rank=0, world_size=1, batch_size=5, map_fn=map_index)


def test_pipe_urls_and_a_missing_piped_shard(shard_dir):
    urls = [f"pipe:cat {u}" for u in expand_urls(shard_dir)]
    cfg = DataConfig(num_workers=2, shuffle_buffer=0)
    loader = build_loader(urls, cfg, rank=0, world_size=1, batch_size=5, map_fn=map_index)
    assert sorted(indices([next(loader) for _ in range(40)])) == list(range(200))
    loader.close()
    urls[3] = "pipe:cat /nonexistent/train-000003.tar"
    cfg.max_skip_fraction = 0.5
    loader = build_loader(urls, cfg, rank=0, world_size=1, batch_size=5, map_fn=map_index)
    seen = indices([next(loader) for _ in range(40)])
    assert not any(i % 8 == 3 for i in seen) and loader.stats()["skipped_shards"] >= 1
    loader.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="http shards are read with curl")
def test_http_shards_and_a_404(shard_dir):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=shard_dir))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        spec = f"{base}/train-{{000000..000006}}.tar,{base}/missing.tar"
        cfg = DataConfig(num_workers=2, shuffle_buffer=0, max_skip_fraction=0.5)
        loader = build_loader(spec, cfg, rank=0, world_size=1, batch_size=5, map_fn=map_index)
        seen = indices([next(loader) for _ in range(40)])  # >= one epoch of each role
        loader.close()
        assert set(seen) == {i for i in range(200) if i % 8 != 7}
        assert loader.stats()["skipped_shards"] >= 1
    finally:
        server.shutdown()


def test_one_line_unwraps_a_dataloader_worker_message():
    wrapped = DataError(
        "Caught DataError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\ncorefm.data.errors.DataError: 3 of 4 shards unreadable\n'
    )
    assert one_line(wrapped) == "3 of 4 shards unreadable"
    assert isinstance(wrapped, CorefmError)  # the CLI prints CorefmErrors as one line


def test_a_stream_with_no_usable_data_says_so(shard_dir, shard_spec):
    for name in os.listdir(shard_dir):
        if name.endswith(".tar"):
            _truncate(os.path.join(shard_dir, name))
    cfg = DataConfig(num_workers=0, check_manifest=False, max_skip_fraction=1.0)
    loader = build_loader(shard_spec, cfg, rank=0, world_size=1, batch_size=200, map_fn=map_index)
    with pytest.raises(DataError, match="its data is unusable") as err:
        next(loader)
    assert "fewer workers" not in str(err.value)
