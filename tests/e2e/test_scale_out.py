"""Scale-out launches, executed on this machine: two static launchers, DeepSpeed's launcher over a
hostfile (pdsh + ssh to a real sshd), and SLURM (real daemons, two nodes on this host) with its
time-limit signal and a resubmission that resumes exactly. Each path trains the same tiny recipe as
one corefm launcher with two ranks, and must log the same losses step for step.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from corefm.train.launcher import free_port
from tests.e2e.cluster import slurm_cluster, sshd
from tests.e2e.util import ROOT, RECIPE, corefm_cmd, final, losses, small_overrides, train_cmd

pytestmark = pytest.mark.slow

# Every path gets one thread per rank: the reference run's 2 ranks share the 2 cores, and so do the
# launches under test, so each computes with the same kernels and thread count (equal losses).
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(cmd: list[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **ENV, **(env or {})})


def _sets(overrides: list[str]) -> list[str]:
    return sum((["--set", o] for o in overrides), [])


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory) -> dict[int, float]:
    """Per-step losses of one corefm launcher with 2 ranks."""
    run_dir = tmp_path_factory.mktemp("reference")
    r = _run(train_cmd(small_overrides(digits, run_dir), nproc=2))
    assert r.returncode == 0, r.stderr[-3000:]
    return losses(run_dir)


def test_two_static_launchers_train_together_as_one_with_two_ranks(digits, tmp_path, reference):
    run_dir = tmp_path / "run"
    port = str(free_port())
    cmds = [corefm_cmd("train", str(RECIPE), "--nproc", "1", "--nnodes", "2", "--node-rank", str(node),
                       "--master-addr", "127.0.0.1", "--master-port", port, *_sets(small_overrides(digits, run_dir)))
            for node in (0, 1)]
    procs = [subprocess.Popen(c, cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c in cmds]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "2 rank(s) on cpu (gloo)" in outs[0][0]
    assert losses(run_dir) == reference


def test_hostfile_launch_over_pdsh_and_ssh_equals_the_corefm_launcher(digits, tmp_path, reference):
    with sshd(tmp_path / "sshd") as server:
        hostfile = tmp_path / "hostfile"
        hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")  # two "nodes", both this machine
        run_dir = tmp_path / "run"
        # pdsh passes no environment to the remote ranks; DeepSpeed's env file is how a user sends some
        ds_env = tmp_path / "deepspeed_env"
        ds_env.write_text(f"OMP_NUM_THREADS={ENV['OMP_NUM_THREADS']}\n")
        r = _run(corefm_cmd("train", str(RECIPE), "--hostfile", str(hostfile), "--master-addr", "127.0.0.1",
                            "--master-port", str(free_port()), *_sets(small_overrides(digits, run_dir))),
                 env={**server.env, "DS_ENV_FILE": str(ds_env)})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    out = r.stdout + r.stderr
    assert "localhost: " in out and "127.0.0.1: " in out  # pdsh's per-host prefixes: both hosts ran a rank
    assert losses(run_dir) == reference


def test_slurm_job_stops_at_its_time_limit_signal_and_a_resubmission_resumes_exactly(digits, tmp_path):
    run_dir = tmp_path / "run"
    # A constant learning rate, so the stopped job's long max_steps and the resubmission's shorter
    # one follow the same schedule as the uninterrupted reference; a --set value with a space checks
    # that the script passes arguments through intact.
    sets = small_overrides(digits, run_dir, **{"train.max_steps": 100000, "checkpoint.every": 0,
                                               "schedule.name": "constant", "log.every": 1})
    sets.append("log.run_name=slurm job")
    with slurm_cluster(tmp_path / "slurm", nodes=2) as cluster:
        env = {**ENV, "MASTER_PORT": str(free_port()), "NPROC": "1"}

        def sbatch(*extra: str, overrides: list[str]) -> str:
            r = cluster.run("sbatch", "--parsable", "--nodes", "2", "--gpus-per-node=0", "--cpus-per-task=1",
                            f"--output={tmp_path}/slurm-%j.out", *extra, "launch/slurm.sbatch", str(RECIPE),
                            *_sets(overrides), cwd=ROOT, env=env)
            assert r.returncode == 0, r.stderr
            return r.stdout.strip().split(";")[0]

        # --time 3 with --signal TERM@120: SLURM sends SIGTERM to the steps about a minute in (it may come
        # up to a minute early, so the start-up is well past by then).
        job = sbatch("--time=3", "--signal=TERM@120", overrides=sets)
        state = cluster.wait(job, timeout=240)
        log = (tmp_path / f"slurm-{job}.out").read_text()
        assert state == "COMPLETED", log[-3000:]  # it checkpointed and exited 0 before the limit
        assert "2 rank(s) on cpu (gloo)" in log, log[-3000:]
        match = re.search(r"corefm: stopped by signal at step (\d+); checkpoint saved", log)
        assert match, log[-3000:]
        step = int(match.group(1))
        assert (run_dir / "checkpoints" / f"step_{step:08d}").is_dir() and not (run_dir / "final.json").exists()

        # Resubmitted with a nearer end: it resumes at the stop step and trains 6 more.
        resumed = [s for s in sets if not s.startswith("train.max_steps=")] + [f"train.max_steps={step + 6}"]
        job2 = sbatch(overrides=resumed)
        assert cluster.wait(job2, timeout=240) == "COMPLETED", (tmp_path / f"slurm-{job2}.out").read_text()[-3000:]
        log2 = (tmp_path / f"slurm-{job2}.out").read_text()
        assert f"resumed from step_{step:08d}" in log2, log2[-3000:]
        assert final(run_dir)["step"] == step + 6
    # The reference: the same recipe, uninterrupted, on one corefm launcher with two ranks.
    ref_dir = tmp_path / "reference"
    ref_sets = [s.replace(str(run_dir), str(ref_dir)) for s in resumed]
    r = _run(train_cmd(ref_sets, nproc=2))
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(run_dir) == losses(ref_dir)
