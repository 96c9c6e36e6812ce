"""Checkpoint folder housekeeping without DeepSpeed: keep_last prunes, a failed universal conversion
is one line and leaves no half-written folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corefm.errors import CheckpointError
from corefm.train import checkpoint as ckpt


class FakeEngine:
    def save_checkpoint(self, path: str, tag: str, save_latest: bool) -> None:
        (Path(path) / tag).mkdir(parents=True)
        (Path(path) / tag / "mp_rank_00_model_states.pt").write_bytes(b"x")


def test_keep_last_keeps_only_the_newest_complete_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8):
        ckpt.save(FakeEngine(), root, step, {"data": {}}, {"step": step, "world_size": 1}, keep_last=2)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000006", "step_00000008"]
    assert ckpt.latest_checkpoint(root).name == "step_00000008"
    assert json.loads((root / "step_00000008" / "meta.json").read_text())["step"] == 8


def test_keep_last_zero_keeps_everything(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        ckpt.save(FakeEngine(), root, step, {}, {"step": step}, keep_last=0)
    assert len(list(root.glob("step_*"))) == 3


def test_a_checkpoint_the_converter_cannot_read_is_one_line(tmp_path):
    root = tmp_path / "checkpoints"
    path = ckpt.save(FakeEngine(), root, 4, {}, {"step": 4, "world_size": 2}, keep_last=0)
    with pytest.raises(CheckpointError, match="ds_to_universal could not convert .*; see .*ds_universal.log"):
        ckpt.convert_to_universal(path)
    assert not (path / ckpt.UNIVERSAL_TAG).exists() and not list(path.glob(".tmp-*"))
