"""Bounded parameters (CLIP's logit scale) are clamped after the optimizer step, module and fp32 master
copies alike, at every ZeRO stage, and can come back from their bound (open_clip's behaviour)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.util import run_ranks

pytestmark = pytest.mark.slow


def test_clamped_after_the_step_at_every_zero_stage_and_free_to_come_back(tmp_path):
    out = tmp_path / "trace.json"
    run_ranks(Path(__file__).with_name("bounds_probe.py"), str(out))
    for config, trace in json.loads(out.read_text()).items():
        pushed_out, came_back = trace[:2], trace[2:]
        for t in pushed_out:  # the optimizer moved it past 2.0; both copies are back at the bound
            assert t["module"] == t["master"] == 2.0, (config, trace)
        # the gradient was not cut at the bound: the loss turned round and the parameter followed (once
        # Adam's momentum turned)
        assert came_back[-1]["master"] < came_back[-2]["master"] < 2.0, (config, trace)
        assert abs(came_back[-1]["module"] - came_back[-1]["master"]) < 1e-2, (config, trace)
