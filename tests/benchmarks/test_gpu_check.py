"""The GPU check's scripts run end to end on a CPU (tiny shapes), so they do not rot between GPU runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.util import ROOT, run

pytestmark = pytest.mark.slow
GPU = ROOT / "benchmarks" / "gpu"


def test_check_script_is_valid_bash_and_refuses_without_its_wheels(tmp_path):
    assert subprocess.run(["bash", "-n", str(GPU / "check.sh")]).returncode == 0
    assert subprocess.run(["bash", "-n", str(GPU / "prepare.sh")]).returncode == 0
    # Run from a copy without .whl/ or .gpucheck/: one line naming what to do, exit 2.
    copy = tmp_path / "repo"
    (copy / "benchmarks" / "gpu").mkdir(parents=True)
    (copy / "benchmarks" / "gpu" / "check.sh").write_text((GPU / "check.sh").read_text())
    r = subprocess.run(["bash", str(copy / "benchmarks" / "gpu" / "check.sh")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("corefm: error:") and "prepare.sh" in r.stderr


def test_train_check_runs_a_project_through_corefm_train(tmp_path):
    out = tmp_path / "out.json"
    r = run([sys.executable, str(GPU / "train_check.py"), "--data", str(tmp_path / "data"), "--out",
             str(tmp_path / "runs"), "--projects", "vit", "--stages", "2", "--steps", "6", "--no-resume",
             "--expect-device", "cpu", "--json", str(out)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["ok"] and [(x["project"], x["zero"]) for x in res["runs"]] == [("vit", 2)]
    assert all(res["runs"][0]["checks"].values()) and "all pass" in res["table"]


def test_speed_script_measures_every_section(tmp_path):
    out = tmp_path / "speed.json"
    r = run([sys.executable, str(GPU / "speed.py"), "--device", "cpu", "--quick", "--no-compile", "--json", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {"openelm", "clip", "loader", "peak_bf16_flops", "torch", "date"} <= set(res)
    assert len(res["openelm"]["rows"]) == 3 and all(v > 0 for v in res["clip"]["samples_per_s"].values())
    assert "| corefm OpenELM (uniform) |" in r.stdout and "x what the GPU consumes" in r.stdout


def test_train_check_deadline_kills_its_runs_and_still_reports(tmp_path):
    """Past --deadline no run starts and running ones are killed with their process groups (they run
    in sessions of their own), and the JSON still says what happened."""
    out = tmp_path / "out.json"
    r = run([sys.executable, str(GPU / "train_check.py"), "--data", str(tmp_path / "data"), "--out",
             str(tmp_path / "runs"), "--projects", "vit", "--stages", "1,2", "--steps", "20000", "--no-resume",
             "--parallel", "1", "--deadline", "25", "--expect-device", "cpu", "--json", str(out)])
    assert r.returncode == 1 and "deadline of 25 s: stopping every run" in r.stderr
    res = json.loads(out.read_text())
    first, second = res["runs"]
    assert first["rc"] == -9 and not first["ok"]  # killed mid-run
    assert second["checks"] == {"started before the deadline": False}
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "runs")], capture_output=True, text=True).stdout
    assert not left.strip(), f"processes left behind: {left}"
