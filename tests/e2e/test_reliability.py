"""Nothing lost under SLURM-style signals, concurrent launches, recipe changes and kills; two CPU ranks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.util import ROOT, error_line, final, losses, run, small_overrides, train_cmd

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return sorted(out)


def start(cmd: list[str]) -> subprocess.Popen:
    # Its own session and process group, as under SLURM: a signal to the group reaches every process.
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def wait_for(run_dir: Path, proc: subprocess.Popen, name: str, timeout: float = 240) -> None:
    marker = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.is_file() and marker.read_text().strip() >= name:
            return
        assert proc.poll() is None, f"run ended before {name}:\n{proc.stderr.read()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint {name} after {timeout}s")


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "r"
    r = run(train_cmd(small_overrides(digits, run_dir, **{"deepspeed.zero_stage": 1})))
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("target", ["group", "rank", "dataloader worker"])
def test_sigterm_anywhere_in_the_run(digits, reference, tmp_path, target):
    """SLURM signals the whole group; a rank alone or a data worker alone may get it too."""
    run_dir = tmp_path / "r"
    cmd = train_cmd(small_overrides(digits, run_dir, **{"deepspeed.zero_stage": 1}))
    proc = start(cmd)
    wait_for(run_dir, proc, "step_00000008")
    ranks = children(proc.pid)
    if target == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    elif target == "rank":
        os.kill(ranks[1], signal.SIGTERM)
    else:
        workers = [w for rank in ranks for w in children(rank)]
        assert workers, "no DataLoader worker found"
        os.kill(workers[0], signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    if target == "dataloader worker":  # workers leave stop signals to their rank: the run goes on
        assert "stopped by signal" not in out and final(run_dir)["step"] == 24
    else:
        assert "stopped by signal" in out and max(losses(run_dir)) < 24
        again = run(cmd)
        assert again.returncode == 0, again.stderr[-3000:]
    assert losses(run_dir) == losses(reference)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == sorted(set(steps)), "a step is logged twice"


def test_sigterm_during_start_up_stops_cleanly(digits, tmp_path):
    proc = start(train_cmd(small_overrides(digits, tmp_path / "r")))
    time.sleep(3)  # importing torch and DeepSpeed, meeting at the rendezvous: no step yet
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by signal before the first step" in out and "Traceback" not in err


def test_kill9_mid_run_then_rerun_logs_each_step_once(digits, reference, tmp_path):
    run_dir = tmp_path / "r"
    cmd = train_cmd(small_overrides(digits, run_dir, **{"deepspeed.zero_stage": 1}))
    proc = start(cmd)
    wait_for(run_dir, proc, "step_00000008")
    time.sleep(1.0)  # a few more steps logged past the checkpoint, then the node dies
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert max(losses(run_dir)) > 8
    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(1, 25)) and losses(run_dir) == losses(reference)


def test_kill9_after_the_final_checkpoint_keeps_final_json_complete(digits, reference, tmp_path):
    # A slow final evaluation (every training sample, one at a time) leaves time to kill during it.
    run_dir = tmp_path / "r"
    slow_eval = {"deepspeed.zero_stage": 1, "data.val": str(digits / "train"), "eval.batch_size": 1}
    cmd = train_cmd(small_overrides(digits, run_dir, **slow_eval))
    proc = start(cmd)
    wait_for(run_dir, proc, "step_00000024")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "final.json").exists(), "killed too late: the final evaluation had finished"
    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    got = final(run_dir)
    assert got["loss"] is not None and got["last_loss"] == final(reference)["last_loss"]
    assert got["eval"]["samples"] > 1000 and (run_dir / "model.safetensors").is_file()


def test_one_run_per_run_dir(digits, tmp_path):
    run_dir = tmp_path / "r"
    first = start(train_cmd(small_overrides(digits, run_dir, **{"train.max_steps": 60})))
    lock = run_dir / ".corefm-lock"
    deadline = time.monotonic() + 60
    while not lock.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    holder = json.loads(lock.read_text())
    second = run(train_cmd(small_overrides(digits, run_dir, **{"train.max_steps": 60})))
    line = error_line(second, "is in use by pid", str(holder["pid"]), "still running", "--force")
    assert str(run_dir) in line
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert not lock.exists()  # released at the end
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "train"]
    assert steps == list(range(1, 61))  # the refused run wrote nothing into it


def test_stale_and_foreign_locks(digits, tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = run_dir / ".corefm-lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "start_time": "1", "time": 0,
                                "token": "x", "command": "corefm train old.yaml"}))
    cmd = train_cmd(small_overrides(digits, run_dir, **{"train.max_steps": 2, "checkpoint.every": 0}))
    r = run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"removing a stale lock of {run_dir}: pid {dead.pid}" in r.stderr
    lock.write_text(json.dumps({"host": "node-07", "pid": 4242, "time": 0, "token": "y",
                                "command": "corefm train other.yaml"}))
    error_line(run(cmd), "in use by pid 4242 on node-07", "cannot be checked from this host")
    forced = run(cmd + ["--force"])
    assert forced.returncode == 0 and "--force: taking the lock" in forced.stderr, forced.stderr[-3000:]


def test_a_resume_applies_what_it_can_and_refuses_the_rest(digits, tmp_path):
    run_dir = tmp_path / "r"
    base = small_overrides(digits, run_dir, **{"train.max_steps": 8, "optim.lr": 1e-3, "schedule.name": "constant",
                                               "schedule.warmup_steps": 0})
    assert run(train_cmd(base)).returncode == 0
    longer = run(train_cmd(base + ["optim.lr=0.02", "train.max_steps=12"]))
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "resuming with a changed recipe: optim.lr 0.001 -> 0.02, train.max_steps 8 -> 12" in longer.stdout
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    change = [r for r in records if r["kind"] == "recipe_change"]
    assert change and change[0]["step"] == 8 and change[0]["optim.lr"] == [0.001, 0.02]
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    assert lrs[8] == pytest.approx(1e-3) and lrs[9] == pytest.approx(0.02) and max(lrs) == 12
    assert json.loads((run_dir / "recipe.json").read_text())["optim"]["lr"] == 0.02
    for change, fragment in (("model.width=48", "model.width 32 -> 48"),
                             ("deepspeed.zero_stage=3", "deepspeed.zero_stage 2 -> 3"),
                             ("deepspeed.precision=bf16", "deepspeed.precision 'fp32' -> 'bf16'"),
                             ("train.micro_batch_size=8", "train.micro_batch_size 16 -> 8")):
        error_line(run(train_cmd(base + ["train.max_steps=12", change])), "a resume cannot change", fragment)


def test_bad_labels_are_skipped_and_counted_then_bounded(tmp_path):
    """Labels 'abc', 37 (of 10 classes) and -1: each skipped, named, counted; past the bound, one line."""
    import numpy as np

    from corefm.data import ShardWriter
    from corefm.data.image_sets import _png

    def shards(out: Path, bad_every: int) -> Path:
        rng = np.random.default_rng(0)
        with ShardWriter(out, max_samples_per_shard=50, producer={"name": "test"}) as w:
            for i in range(200):
                cls = [b"abc", 37, -1][i % 3] if i % bad_every == 0 else i % 10
                w.write({"__key__": f"s{i:04d}", "png": _png(rng.integers(0, 255, (8, 8), dtype=np.uint8)),
                         "cls": cls})
        return out

    few = shards(tmp_path / "few", 40)  # 5 of 200: under the 5% bound
    # 14 steps of 16 cover the first epoch, so every bad sample is met
    sets = small_overrides(few, tmp_path / "r", **{"data.train": few, "data.val": few, "train.max_steps": 14,
                                                   "checkpoint.every": 0, "data.num_workers": 1})
    r = run(train_cmd(sets, nproc=1))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "label b'abc' is not an integer" in r.stderr and "label 37 is outside 0..9" in r.stderr
    many = shards(tmp_path / "many", 4)
    sets = small_overrides(many, tmp_path / "r2", **{"data.train": many, "data.val": many, "data.num_workers": 1})
    error_line(run(train_cmd(sets, nproc=1)), "samples unusable (bound 5%)")


def test_a_failing_rank_is_the_one_line_the_others_stay_quiet(digits, tmp_path):
    """Rank 1's shards are all truncated; rank 0, waiting for it in a collective, must not print a traceback."""
    data = tmp_path / "data"  # no dataset.json: the truncation is found only by reading
    data.mkdir()
    for shard in sorted((digits / "train").glob("*.tar")):
        (data / shard.name).write_bytes(shard.read_bytes())
    for i, shard in enumerate(sorted(data.glob("*.tar"))):
        if i % 2 == 1:  # plain epochs deal shards to ranks alternately
            shard.write_bytes(shard.read_bytes()[:3000])
    shards = ",".join(str(p) for p in sorted(data.glob("*.tar")))
    sets = small_overrides(digits, tmp_path / "r", **{"data.train": shards, "data.num_workers": 1,
                                                      "data.shuffle_shards": False})
    line = error_line(run(train_cmd(sets)), "rank 1", "unreadable")
    assert "use fewer workers" not in line


def test_skipped_shards_are_counted_over_all_ranks(digits, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, shard in enumerate(sorted((digits / "train").glob("*.tar"))):
        (data / shard.name).write_bytes(shard.read_bytes()[:5000] if i == 1 else shard.read_bytes())  # rank 1's
    shards = ",".join(str(p) for p in sorted(data.glob("*.tar")))
    run_dir = tmp_path / "r"
    sets = small_overrides(digits, run_dir, **{"data.train": shards, "data.shuffle_shards": False,
                                               "data.max_skip_fraction": 0.9, "train.max_steps": 40,
                                               "log.every": 20, "checkpoint.every": 0})
    r = run(train_cmd(sets))
    assert r.returncode == 0, r.stderr[-3000:]
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # rank 0 read no bad shard: what it logs (one per epoch that met it) is rank 1's
    assert [x.get("skipped_shards", 0) for x in logged if x["kind"] == "train"][-1] >= 1
