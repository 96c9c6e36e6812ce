"""Two CPU ranks over gloo: train, get killed or stopped, resume, and match the uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.e2e.util import ROOT, final, losses, run, small_overrides, train_cmd

pytestmark = pytest.mark.slow


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, name: str, timeout: float = 240) -> None:
    marker = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.is_file() and marker.read_text().strip() >= name:
            return
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"run ended before {name} was written:\n{out[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint {name} after {timeout}s")


def uninterrupted(digits: Path, tmp_path: Path, stage: int) -> Path:
    run_dir = tmp_path / f"straight_z{stage}"
    r = run(train_cmd(small_overrides(digits, run_dir, **{"deepspeed.zero_stage": stage})))
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("stage", [2, 3])
def test_kill9_then_rerun_matches_uninterrupted(digits, tmp_path, stage):
    reference = uninterrupted(digits, tmp_path, stage)
    run_dir = tmp_path / f"killed_z{stage}"
    cmd = train_cmd(small_overrides(digits, run_dir, **{"deepspeed.zero_stage": stage}))
    # Own process group, so kill -9 takes the launcher and both ranks at once, like a node dying.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    wait_for_checkpoint(run_dir, proc, "step_00000008")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(losses(run_dir))
    assert killed_at < 24, "the run finished before it was killed"
    # the resumed run takes its FLOPs per micro-batch from here instead of counting them on its first
    # step: torch's counter can change a GPU forward's rounding, so it runs on step 1 of either run only
    rank_state = torch.load(run_dir / "checkpoints" / "step_00000008" / "rank_00000.pt", weights_only=False)
    assert rank_state["flops_per_micro"] > 0

    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step_" in again.stdout + again.stderr
    want, got = losses(reference), losses(run_dir)
    assert sorted(got) == list(range(1, 25))
    assert got == want  # exact: fp32 on CPU, same data order, same RNG
    assert final(run_dir)["last_loss"] == final(reference)["last_loss"]
    assert final(run_dir)["eval"] == final(reference)["eval"]


def test_sigterm_checkpoints_and_resumes(digits, tmp_path):
    reference = uninterrupted(digits, tmp_path, 1)
    run_dir = tmp_path / "sigterm"
    cmd = train_cmd(small_overrides(digits, run_dir, **{"deepspeed.zero_stage": 1}))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_checkpoint(run_dir, proc, "step_00000008")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "stopped by signal" in out
    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert losses(run_dir) == losses(reference)
    # Started once more, the finished run only re-evaluates and keeps its recorded losses.
    before = final(run_dir)
    assert before["loss"] is not None
    once_more = run(cmd)
    assert once_more.returncode == 0, once_more.stderr[-3000:]
    after = final(run_dir)
    assert (after["step"], after["loss"], after["last_loss"]) == (before["step"], before["loss"], before["last_loss"])
