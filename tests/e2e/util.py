"""Helpers for end-to-end runs: build `corefm` commands, run them, read their metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "projects/vit/configs/digits_tiny.yaml"


def small_overrides(data: Path, run_dir: Path, **extra) -> list[str]:
    """A tiny, fast version of the demo recipe (same code path, smaller model)."""
    sets = {"run_dir": str(run_dir), "data.train": str(data / "train"), "data.val": str(data / "val"),
            "model.width": 32, "model.layers": 2, "model.heads": 2, "train.max_steps": 24,
            "train.micro_batch_size": 16, "checkpoint.every": 8, "log.every": 1, "log.progress": False,
            "log.wandb": False, "eval.every": 0, "schedule.warmup_steps": 4}
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def corefm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "corefm.cli", *args]


def train_cmd(overrides: list[str], nproc: int = 2, recipe: Path = RECIPE) -> list[str]:
    return corefm_cmd("train", str(recipe), "--nproc", str(nproc), *sum((["--set", o] for o in overrides), []))


def run(cmd: list[str], timeout: float = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``cmd`` to completion. Past ``timeout`` the whole process tree is killed (its ranks and their
    data workers would otherwise keep running into the next tests) and the test fails with the end
    of what it printed: a stuck run's stall report (train.stall_report_s) says where it waited."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(cmd[:4])} ... still running after {timeout:g} s; the end of its output:\n"
                             f"{out[-3000:]}\n--- stderr ---\n{err[-12000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_ranks(script: Path, *args: str, nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """``script`` on ``nproc`` local ranks through torchrun (a free port, one thread each); asserts it
    exited 0, showing the end of its output otherwise."""
    from corefm.train.launcher import free_port

    r = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
             str(free_port()), str(script), *args], timeout=timeout, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


def losses(run_dir: Path) -> dict[int, float]:
    """Per-step training loss from metrics.jsonl; a resumed step keeps its latest value."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "train":
            out[rec["step"]] = rec["loss"]
    return out


def final(run_dir: Path) -> dict:
    return json.loads((run_dir / "final.json").read_text())


def error_line(r: subprocess.CompletedProcess, *expected: str) -> str:
    """The bad-input contract: exit code 2, exactly one ``corefm: error: ...`` line on stderr, no
    traceback; the line holds every ``expected`` fragment. Returns the line."""
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("corefm: error:")]
    assert r.returncode == 2, f"exit {r.returncode}, not 2:\n{r.stderr[-3000:]}"
    assert len(errors) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    for fragment in expected:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]
