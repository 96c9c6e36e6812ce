"""Real cluster daemons on this one machine for the scale-out tests: an sshd that DeepSpeed's pdsh
launcher logs into, and a SLURM cluster (munged, slurmctld, two slurmd nodes). Each lives in its own
folder with its own ports and keys, touches nothing of the user's (~/.ssh, /etc/slurm), and is
stopped by its context manager, leaving no process behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from corefm.train.launcher import free_port
from tests.conftest import require_installed


def _wait_for(check, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")


def _stop_pids(pid_files: list[Path]) -> None:
    for f in pid_files:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(f.read_text().split()[0]), signal.SIGTERM)
    end = time.monotonic() + 15
    for f in pid_files:
        with contextlib.suppress(OSError, ValueError):
            pid = int(f.read_text().split()[0])
            while time.monotonic() < end:
                os.kill(pid, 0)  # raises once the process is gone
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)


@dataclass
class Sshd:
    port: int
    env: dict[str, str]  # PATH with an `ssh` that uses this server's key and port


@contextlib.contextmanager
def sshd(root: Path) -> Iterator[Sshd]:
    """An sshd on 127.0.0.1 that accepts a key made here; ``env`` puts an ``ssh`` first on PATH that
    logs in with it (pdsh and DeepSpeed's launcher both call ``ssh`` from PATH)."""
    require_installed(shutil.which("pdsh") is not None and Path("/usr/sbin/sshd").is_file(),
                      "pdsh and openssh-server (launch/setup.sh installs them)")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True)
    shutil.copy(root / "user_key.pub", root / "authorized_keys")
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root}/host_key\nAuthorizedKeysFile {root}/authorized_keys\n"
        f"PasswordAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        f"PidFile {root}/sshd.pid\n")
    (root / "ssh_config").write_text(
        f"Host *\n  Port {port}\n  IdentityFile {root}/user_key\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {root}/ssh_config "$@"\n')
    (bin_dir / "ssh").chmod(0o755)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    subprocess.run(["/usr/sbin/sshd", "-f", str(root / "sshd_config"), "-E", str(root / "sshd.log")], check=True)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    try:
        _wait_for(lambda: subprocess.run(["ssh", "127.0.0.1", "true"], env={**os.environ, **env},
                                         capture_output=True).returncode == 0, "sshd")
        yield Sshd(port, env)
    finally:
        _stop_pids([root / "sshd.pid"])


@dataclass
class Slurm:
    conf: Path
    env: dict[str, str]  # SLURM_CONF for sbatch/squeue/scontrol
    nodes: int

    def run(self, *cmd: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env={**os.environ, **self.env, **(env or {})}, capture_output=True,
                              text=True, **kw)

    def wait(self, job: str, timeout: float) -> str:
        """Wait for a job to leave the queue; returns its final state (COMPLETED, FAILED, ...)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if job not in self.run("squeue", "-h", "-o", "%i").stdout.split():
                break
            time.sleep(1)
        else:
            self.run("scancel", job)
            raise TimeoutError(f"SLURM job {job} still queued or running after {timeout:.0f} s")
        out = self.run("scontrol", "show", "job", job).stdout
        return next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), "GONE")


@contextlib.contextmanager
def slurm_cluster(root: Path, nodes: int = 2) -> Iterator[Slurm]:
    """munged + slurmctld + ``nodes`` slurmd daemons, all on this host (Debian's slurmd runs several
    nodes on one host when each has its own port), one CPU per node."""
    have = all(shutil.which(x) or Path("/usr/sbin", x).is_file() for x in ("munged", "slurmctld", "slurmd", "sbatch"))
    require_installed(have, "SLURM and munge (launch/setup.sh installs slurmd, slurmctld, slurm-client, munge)")
    root.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for sub in ("state", "log", *(f"spool-n{i}" for i in range(1, nodes + 1))):
        (root / sub).mkdir(exist_ok=True)
    subprocess.run(["mungekey", "-c", "-f", "-k", str(root / "munge.key")], check=True, capture_output=True)
    sock = root / "munge.sock"
    subprocess.run(["munged", "--force", "-S", str(sock), f"--key-file={root}/munge.key",
                    f"--log-file={root}/log/munged.log", f"--pid-file={root}/munged.pid",
                    f"--seed-file={root}/munged.seed"], check=True)
    ctl, slurmd = free_port(), free_port()
    node_lines = "".join(f"NodeName=n{i} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} CPUs=1 "
                         "RealMemory=4000\n" for i in range(1, nodes + 1))
    names = ",".join(f"n{i}" for i in range(1, nodes + 1))
    conf = root / "slurm.conf"
    conf.write_text(
        f"ClusterName=corefmtest\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={ctl}\nSlurmdPort={slurmd}\n"
        f"AuthType=auth/munge\nAuthInfo=socket={sock}\nCredType=cred/munge\nSlurmUser=root\nSlurmdUser=root\n"
        f"StateSaveLocation={root}/state\nSlurmdSpoolDir={root}/spool-%n\nSlurmctldPidFile={root}/slurmctld.pid\n"
        f"SlurmdPidFile={root}/slurmd-%n.pid\nSlurmctldLogFile={root}/log/slurmctld.log\n"
        f"SlurmdLogFile={root}/log/slurmd-%n.log\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
        "JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n"
        "SchedulerType=sched/builtin\nSelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\nMpiDefault=none\n"
        "ReturnToService=2\nKillWait=30\n" + node_lines +
        f"PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES\n")
    env = {"SLURM_CONF": str(conf)}
    cluster = Slurm(conf, env, nodes)
    pids = [root / "munged.pid"]
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, env={**os.environ, **env})
        pids.append(root / "slurmctld.pid")
        for i in range(1, nodes + 1):
            subprocess.run(["slurmd", "-f", str(conf), "-N", f"n{i}"], check=True, env={**os.environ, **env})
            pids.append(root / f"slurmd-n{i}.pid")
        _wait_for(lambda: cluster.run("sinfo", "-h", "-o", "%D %t").stdout.split() == [str(nodes), "idle"],
                  "the SLURM nodes")
        yield cluster
    finally:
        cluster.run("scancel", "--full", "-u", "root")
        _stop_pids(pids[1:][::-1])  # the slurmds, then the controller
        _stop_pids(pids[:1])
