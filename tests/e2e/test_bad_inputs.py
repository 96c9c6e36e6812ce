"""Every bad input costs one line, ``corefm: error: ...``, and exit code 2 (the README's table)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path

import pytest

from corefm.cli import main
from tests.e2e.util import RECIPE, corefm_cmd, error_line, run, small_overrides, train_cmd


@pytest.fixture
def cli(capsys):
    """corefm's command in this process (the checks that stop before any worker starts)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def call(*args: str) -> subprocess.CompletedProcess:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    yield call
    for s, handler in saved.items():  # `corefm train` installs its stop-signal handler first thing
        signal.signal(s, handler)


@pytest.mark.parametrize("override,fragment", [
    ("train.micro_batch_size=0", "train.micro_batch_size must be at least 1, got 0"),
    ("train.micro_batch_size=-4", "train.micro_batch_size must be at least 1, got -4"),
    ("train.grad_accum=0", "train.grad_accum must be at least 1"),
    ("optim.lr=-1", "optim.lr must be a finite number > 0, got -1.0"),
    ("optim.lr=.nan", "optim.lr must be a finite number > 0, got nan"),
    ("log.every=0", "log.every must be at least 1"),
    ("train.max_steps=-3", "train.max_steps must be at least 1, got -3"),
])
def test_out_of_range_values(cli, override, fragment, tmp_path):
    error_line(cli("train", RECIPE, "--set", f"run_dir={tmp_path}", "--set", override), fragment)


@pytest.mark.parametrize("flags,fragment", [(["--nproc", "0"], "--nproc must be at least 1, got 0"),
                                            (["--nproc", "-2"], "--nproc must be at least 1, got -2"),
                                            (["--nnodes", "2", "--node-rank", "2"], "--node-rank 2 is not in 0..1")])
def test_launches_that_cannot_work(cli, flags, fragment):
    error_line(cli("train", RECIPE, *flags), fragment)


def test_a_recipe_that_is_not_text(cli, tmp_path):
    binary = tmp_path / "r.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    error_line(cli("train", binary), "not a text file")


def test_inspecting_one_shard_and_a_damaged_one(cli, digits, tmp_path):
    shard = sorted((digits / "train").glob("*.tar"))[0]
    ok = cli("data", "inspect", shard)
    assert ok.returncode == 0 and "samples, keys cls, json, png, txt" in ok.stdout
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[:3000])
    error_line(cli("data", "inspect", cut), "unreadable after")


def test_a_caption_that_is_not_utf8_is_a_listed_reject(cli, tmp_path):
    import json

    import numpy as np
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "t.csv").write_bytes(b"filepath,caption\n0.png,a red square\n1.png,caf\xe9 au lait\n2.png,a box\n")
    r = cli("clip", "image-text", "--source", f"csv:{tmp_path / 't.csv'}", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"key": "row-00000001", "source": "1.png", "reason": "bad caption: not UTF-8"}]


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path):
    from corefm.errors import CheckpointError
    from corefm.train import checkpoint as ckpt

    class FullDisk:
        def save_checkpoint(self, path, tag, save_latest):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(path) / tag / "model_states.pt"))

    root = tmp_path / "checkpoints"
    (root / "step_00000004").mkdir(parents=True)
    (root / "step_00000004" / "meta.json").write_text("{}")
    (root / "latest").write_text("step_00000004")
    with pytest.raises(CheckpointError, match="writing checkpoint step_00000008 failed: No space left on device "
                                              r".*; the previous checkpoint step_00000004 is intact"):
        ckpt.save(FullDisk(), root, 8, {}, {}, keep_last=2)
    assert not list(root.glob(".tmp-*")) and ckpt.latest_checkpoint(root).name == "step_00000004"


@pytest.mark.slow
def test_runtime_bad_inputs(digits, tmp_path):
    """The ones found after the ranks start: each still one line from the launcher."""
    run_dir = tmp_path / "r"
    sets = small_overrides(digits, run_dir, **{"train.max_steps": 4, "checkpoint.every": 2})
    # a width the heads do not divide (found when the model is built, in every rank)
    error_line(run(train_cmd(sets + ["model.width=33"])), "model vit_classifier: dim (33) is not divisible")
    # wandb online with no server to reach
    env = dict(os.environ, WANDB_API_KEY="a" * 40, WANDB_BASE_URL="http://127.0.0.1:9")
    r = subprocess.run(train_cmd(sets + ["log.wandb=online", f"run_dir={tmp_path / 'w'}"]), capture_output=True,
                       text=True, env=env, timeout=300)
    error_line(r, "wandb could not start online", "log.wandb: offline")
    # a finished run, pushed to a Hub that cannot be reached
    assert run(train_cmd(sets)).returncode == 0
    env = dict(os.environ, HF_TOKEN="x", HF_ENDPOINT="http://127.0.0.1:9")
    r = subprocess.run(corefm_cmd("release", str(run_dir), "--out", str(tmp_path / "rel"), "--push", "org/name"),
                       capture_output=True, text=True, env=env, timeout=300)
    error_line(r, "pushing", "to the Hub repository org/name failed", "ConnectError")
    # a damaged checkpoint file, then resumed
    states = next((run_dir / "checkpoints" / "step_00000004" / "ds").glob("*model_states.pt"))
    states.write_bytes(states.read_bytes()[:100])
    error_line(run(train_cmd(sets + ["train.max_steps=6"])), "could not load", "may be damaged")
