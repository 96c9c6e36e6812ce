"""Launcher commands and presets (the runs themselves are in tests/e2e)."""

import subprocess
import time
from pathlib import Path

import pytest

from corefm.train.config import parse_recipe
from corefm.train.ds_config import build_ds_config
from corefm.train.launcher import LaunchSpec, deepspeed_command

ROOT = Path(__file__).resolve().parents[2]


def test_hostfile_goes_through_deepspeeds_launcher(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-01 slots=8\nnode-02 slots=8\n")
    cmd = deepspeed_command(LaunchSpec(hostfile=str(hostfile), master_addr="node-01", master_port=29500),
                            ["r.yaml", "--set", "a=1"])
    assert Path(cmd[0]).name == "deepspeed"
    assert cmd[1:] == ["--hostfile", str(hostfile), "--master_addr", "node-01", "--master_port", "29500",
                       "--no_local_rank", "--module", "corefm.train.worker", "r.yaml", "--set", "a=1"]
    with pytest.raises(FileNotFoundError, match="hostfile not found"):
        deepspeed_command(LaunchSpec(hostfile=str(tmp_path / "nope")), [])


def test_shell_scripts_parse():
    for script in ("launch/slurm.sbatch", "launch/setup.sh", "launch/demo.sh", "launch/smoke.sh", ".ci/run",
                   *(str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("projects/*/demo.sh")))):
        assert subprocess.run(["bash", "-n", str(ROOT / script)]).returncode == 0, script


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_ds_config_presets_take_batch_settings_from_recipe(stage):
    recipe = parse_recipe({"model": {"name": "vit_classifier"}, "task": {"name": "classification"},
                           "train": {"micro_batch_size": 7, "grad_accum": 3, "grad_clip": 0.5},
                           "deepspeed": {"zero_stage": stage, "precision": "bf16",
                                         "config": {"zero_optimization": {"reduce_bucket_size": 123}}}})
    cfg = build_ds_config(recipe)
    assert cfg["train_micro_batch_size_per_gpu"] == 7 and cfg["gradient_accumulation_steps"] == 3
    assert cfg["gradient_clipping"] == 0.5 and cfg["bf16"]["enabled"] is True
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["zero_optimization"]["reduce_bucket_size"] == 123


def test_a_single_node_launcher_holds_the_rendezvous_port_its_ranks_join(monkeypatch):
    """No port is chosen free and bound later (a race other programs on the node can win): the
    launcher hosts the store on a port it holds, and every rank, rank 0 included, joins as a client."""
    from corefm.train import launcher

    joins = ("import datetime, os; from torch.distributed import TCPStore; "
             "assert os.environ['TORCHELASTIC_USE_AGENT_STORE'] == 'True'; "
             "s = TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), is_master=False, "
             "timeout=datetime.timedelta(seconds=20)); s.add('joined', 1); s.wait(['joined'])")
    monkeypatch.setattr(launcher, "WORKER", ["-c", joins])
    monkeypatch.setattr(launcher, "free_port", lambda: pytest.fail("a single-node launch picked a port to bind later"))
    assert launcher.run_local(LaunchSpec(nproc=2), []) == 0


def test_a_failed_run_leaves_no_process_behind(monkeypatch, tmp_path):
    """Rank 0 fails; rank 1 ignores SIGTERM and has a child of its own (as a data-loader worker is)
    that would outlive it. The launcher returns rank 0's code and takes the whole tree down, so
    nothing keeps the node busy or holds the launcher's output open."""
    import psutil

    from corefm.train import launcher

    pid_file = tmp_path / "grandchild"
    body = ("import os, signal, subprocess, sys, time\n"
            "if os.environ['RANK'] == '0':\n"
            f"    while not os.path.exists({str(pid_file)!r}): time.sleep(0.05)\n"
            "    sys.exit(3)\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            f"open({str(pid_file) + '.part'!r}, 'w').write(str(child.pid))\n"
            f"os.replace({str(pid_file) + '.part'!r}, {str(pid_file)!r})\n"
            "time.sleep(600)\n")
    monkeypatch.setattr(launcher, "WORKER", ["-c", body])
    assert launcher.run_local(LaunchSpec(nproc=2), []) == 3
    grandchild = int(pid_file.read_text())

    def gone() -> bool:
        try:
            return psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + 5
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not gone():
        psutil.Process(grandchild).kill()
        pytest.fail("the child of the killed rank outlived the run")
