"""A training run with a weight EMA (ema.momentum): evaluated beside the raw weights, resumed exactly
after kill -9, exported as model_ema.safetensors, evaluated and released from there."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from safetensors.torch import load_file

from tests.e2e.test_resume import wait_for_checkpoint
from tests.e2e.util import ROOT, corefm_cmd, error_line, final, losses, run, small_overrides, train_cmd

pytestmark = pytest.mark.slow

EMA = {"deepspeed.zero_stage": 3, "ema.momentum": 0.1}


def test_ema_run_resumes_exactly_and_exports(digits, tmp_path):
    reference = tmp_path / "straight"
    r = run(train_cmd(small_overrides(digits, reference, **EMA)))
    assert r.returncode == 0, r.stderr[-3000:]
    done = final(reference)
    assert {"accuracy", "ema_accuracy", "loss", "ema_loss"} <= set(done["eval"])  # the EMA beside the raw weights
    assert done["eval"]["ema_loss"] != done["eval"]["loss"]
    assert done["export_ema"].endswith("model_ema.safetensors")
    raw, ema = load_file(str(reference / "model.safetensors")), load_file(str(reference / "model_ema.safetensors"))
    assert raw.keys() == ema.keys() and any(not (raw[k] == ema[k]).all() for k in raw)

    run_dir = tmp_path / "killed"
    cmd = train_cmd(small_overrides(digits, run_dir, **EMA))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    wait_for_checkpoint(run_dir, proc, "step_00000008")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run_dir / "checkpoints" / "step_00000008" / "ema.safetensors").is_file()
    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert losses(run_dir) == losses(reference)
    a = load_file(str(reference / "checkpoints" / "step_00000024" / "ema.safetensors"))
    b = load_file(str(run_dir / "checkpoints" / "step_00000024" / "ema.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # bit-exact resume
    assert final(run_dir)["eval"] == done["eval"]

    # corefm eval on the exported EMA gives the accuracy the run reported for it
    r = run(corefm_cmd("eval", str(reference), "--weights", "ema"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["accuracy"] == pytest.approx(done["eval"]["ema_accuracy"], abs=1e-9)
    # and corefm release ships it, its card reporting the EMA's numbers
    out = tmp_path / "release"
    r = run(corefm_cmd("release", str(reference), "--out", str(out), "--weights", "ema"))
    assert r.returncode == 0, r.stderr[-3000:]
    shipped = load_file(str(out / "model.safetensors"))
    assert all((shipped[k] == ema[k]).all() for k in ema)
    assert f"| accuracy | {done['eval']['ema_accuracy']:.4f} |" in (out / "README.md").read_text()
    assert not (reference / "final.json").is_symlink() and json.loads((reference / "final.json").read_text()) == done


def test_ema_outputs_of_a_run_without_ema_are_one_line_errors(digits, tmp_path):
    run_dir = tmp_path / "plain"
    r = run(train_cmd(small_overrides(digits, run_dir, **{"train.max_steps": 2}), nproc=1))
    assert r.returncode == 0, r.stderr[-3000:]
    error_line(run(corefm_cmd("release", str(run_dir), "--out", str(tmp_path / "rel"), "--weights", "ema")),
               "model_ema.safetensors is missing")
    error_line(run(corefm_cmd("eval", str(run_dir), "--weights", "ema")), "model_ema.safetensors is missing")
    error_line(run(train_cmd(small_overrides(digits, tmp_path / "bad", **{"ema.momentum": 1.5}))),
               "ema.momentum must be in [0, 1)")


def test_ema_resumes_at_another_world_size(digits, tmp_path):
    """Stored whole, the EMA loads at any world size: a finished 2-rank ZeRO-3 run started again on one
    rank (through DeepSpeed's universal checkpoint) evaluates its EMA exactly as the two ranks did."""
    run_dir = tmp_path / "elastic"
    sets = {**EMA, "train.max_steps": 8}
    r = run(train_cmd(small_overrides(digits, run_dir, **sets)))
    assert r.returncode == 0, r.stderr[-3000:]
    two = final(run_dir)["eval"]
    again = run(train_cmd(small_overrides(digits, run_dir, **sets), nproc=1))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "world size 2 -> 1" in again.stdout + again.stderr
    one = final(run_dir)["eval"]
    assert one["ema_accuracy"] == two["ema_accuracy"] and one["accuracy"] == two["accuracy"]
    assert one["ema_loss"] == pytest.approx(two["ema_loss"], rel=1e-6)
