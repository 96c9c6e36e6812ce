"""Start a recipe on N local processes, on the nodes of a hostfile, or under SLURM.

* one node: this module spawns ``nproc`` workers itself (env ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), forwards SIGTERM/SIGINT to them, and if
  one fails stops the others and prints the failing rank's one-line error (no traceback wall).
* several nodes, static: run the same command on every node with ``--nnodes``, ``--node-rank``
  and ``--master-addr`` (what ``launch/slurm.sbatch`` does with SLURM's variables).
* several nodes from a hostfile: hands over to DeepSpeed's launcher (``deepspeed --hostfile``),
  which starts one copy per node over pdsh/ssh.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from corefm.errors import ConfigError

WORKER = ["-m", "corefm.train.worker"]


@dataclass
class LaunchSpec:
    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0  # 0: the launcher hosts the rendezvous on a port it holds (single node only)
    hostfile: str = ""
    launcher: str = "corefm"  # "corefm" (this module) or "deepspeed" (DeepSpeed's launcher)


def threads_per_process(local_procs: int) -> int:
    """CPU threads for each of ``local_procs`` processes sharing this node's cores (without a limit
    each would start one thread per core and they would oversubscribe the node)."""
    return max(1, (os.cpu_count() or 1) // max(1, local_procs))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_command(spec: LaunchSpec, worker_args: list[str]) -> list[str]:
    """The ``deepspeed`` launcher command: over a hostfile's nodes, or ``nproc`` local processes."""
    if spec.hostfile and not Path(spec.hostfile).is_file():
        raise FileNotFoundError(f"hostfile not found: {spec.hostfile}")
    # The launcher beside this interpreter (a venv need not be activated), else the one on PATH.
    beside = Path(sys.executable).parent / "deepspeed"
    exe = str(beside) if beside.is_file() else shutil.which("deepspeed")
    if exe is None:
        raise FileNotFoundError("DeepSpeed's launcher `deepspeed` is not installed beside this Python or on PATH")
    where = ["--hostfile", spec.hostfile] if spec.hostfile else ["--num_gpus", str(spec.nproc)]
    return [exe, *where, "--master_addr", spec.master_addr, "--master_port", str(spec.master_port or free_port()),
            "--no_local_rank", "--module", WORKER[1], *worker_args]


def host_store(master_addr: str):
    """The rendezvous store of a single-node run without ``--master-port``, hosted by the launcher on a
    port the OS picks and that it holds until the run ends; ranks join it as clients (torch's
    ``TORCHELASTIC_USE_AGENT_STORE`` contract, as under torchrun). A port found free and bound later
    by rank 0 races with everything else starting on the machine: seen on a GPU node with several
    runs starting at once (EADDRINUSE)."""
    from torch.distributed import TCPStore

    return TCPStore(master_addr, 0, is_master=True, wait_for_workers=False)


def run_local(spec: LaunchSpec, worker_args: list[str], stop=None) -> int:
    """Spawn this node's workers and wait; returns the exit code for the whole run."""
    store = host_store(spec.master_addr) if not spec.master_port and spec.nnodes == 1 else None
    port = spec.master_port or store.port
    world = spec.nproc * spec.nnodes
    err_dir = Path(tempfile.mkdtemp(prefix="corefm-errors-"))
    procs: list[subprocess.Popen] = []
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    # Forwarding is in place before the first worker starts, so a stop signal at any moment of the
    # start-up reaches every rank (a worker started after it gets it right after its start).
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    if stop is not None and stop.requested:  # got one while this launcher was starting up
        received.append(stop.signal)
    for local in range(spec.nproc):
        rank = spec.node_rank * spec.nproc + local
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(local), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(spec.nproc), MASTER_ADDR=spec.master_addr, MASTER_PORT=str(port),
                   COREFM_ERROR_FILE=str(err_dir / f"rank{rank}.txt"))
        if store is not None:
            env["TORCHELASTIC_USE_AGENT_STORE"] = "True"
        # Processes share the cores of this node; without this each would start one thread per core.
        env.setdefault("OMP_NUM_THREADS", str(threads_per_process(spec.nproc)))
        procs.append(subprocess.Popen([sys.executable, *WORKER, *worker_args], env=env))
        if received:
            procs[-1].send_signal(received[0])
    try:
        code, first = _wait(procs)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    # The rank that failed first has the message that matters; the others failed because of it.
    ranks = [spec.node_rank * spec.nproc + i for i in range(spec.nproc)]
    order = [first, *(i for i in range(spec.nproc) if i != first)] if first is not None else range(spec.nproc)
    files = [err_dir / f"rank{ranks[i]}.txt" for i in order]
    messages = [f.read_text().strip() for f in files if f.is_file()]
    shutil.rmtree(err_dir, ignore_errors=True)
    if code and messages:
        print(f"corefm: error: {messages[0]}", file=sys.stderr)
    elif code:
        print(f"corefm: error: a worker exited with code {code} (see its output above)", file=sys.stderr)
    return code


def _wait(procs: list[subprocess.Popen], grace: float = 10.0) -> tuple[int, int | None]:
    """Wait for all; once one fails, give the rest ``grace`` seconds, then kill them.
    Returns (exit code for the run, index of the process that failed first or None)."""
    failed_at, first_bad, first = None, 0, None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            code = first_bad or next((c for c in codes if c), 0)
            # A worker killed by a signal has a negative code; exit as a shell would (128 + N).
            return (128 - code if code < 0 else code), first
        bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if bad and failed_at is None:
            failed_at, first, first_bad = time.monotonic(), bad[0], codes[bad[0]]
            for p in procs:  # peers are likely blocked in a collective: ask them to stop
                if p.poll() is None:
                    p.terminate()
        if failed_at is not None and time.monotonic() - failed_at > grace:
            for p in procs:
                if p.poll() is None:
                    kill_tree(p.pid)
        time.sleep(0.2)


def kill_tree(pid: int) -> None:
    """SIGKILL a worker and every process below it. A worker killed alone leaves its data-loader
    workers behind: a stuck one never notices its parent is gone, keeps the node's cores busy, and
    holds the launcher's stdout and stderr open, so whatever reads them (a job script, a test)
    waits on a run that has ended."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def check_spec(spec: LaunchSpec) -> None:
    """One line for a launch that cannot work (before anything starts)."""
    if spec.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {spec.nproc}")
    if spec.nnodes < 1 or not 0 <= spec.node_rank < spec.nnodes:
        raise ConfigError(f"--node-rank {spec.node_rank} is not in 0..{spec.nnodes - 1} (--nnodes {spec.nnodes})")
    if not 0 <= spec.master_port <= 65535:
        raise ConfigError(f"--master-port must be a port number, got {spec.master_port}")
    if spec.nnodes > 1 and not spec.master_port:
        raise ConfigError("--master-port is required with --nnodes > 1 (every node must agree)")


def launch(spec: LaunchSpec, worker_args: list[str], stop=None) -> int:
    """Start the run; ``stop``: a StopFlag installed earlier, whose signal (if any) is passed on."""
    if spec.hostfile or spec.launcher == "deepspeed":
        proc = subprocess.Popen(deepspeed_command(spec, worker_args))
        # DeepSpeed's launcher passes a stop signal on to its ranks; hand it the ones this process gets.
        old = {s: signal.signal(s, lambda signum, frame: proc.send_signal(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
        if stop is not None and stop.requested:
            proc.send_signal(stop.signal)
        try:
            return proc.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    return run_local(spec, worker_args, stop)
