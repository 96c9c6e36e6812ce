"""One run at a time per run directory: ``<run_dir>/.corefm-lock``.

Two runs writing one run directory resume from different checkpoints, interleave metrics and delete
each other's temporary checkpoint folders. The launcher of node 0 (or, when something else started
the ranks, rank 0) creates the lock file atomically (``O_EXCL``) with who holds it: host, pid,
the process's start time and boot id (so a recycled pid is not mistaken for the holder), a random
token the ranks are given, and the command. A lock whose holder is gone (same host, that process
no longer running) is stale: it is reported and replaced. A live holder, or one on another host
(which cannot be checked from here), makes the new run stop with one line; ``--force`` takes the
lock anyway, for a holder known to be dead.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any

from corefm.errors import CorefmError

LOCK_NAME = ".corefm-lock"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or ""."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(holder: dict[str, Any]) -> bool | None:
    """True/False for a holder on this host, None when it cannot be told (another host)."""
    if holder.get("host") != socket.gethostname():
        return None
    if holder.get("boot_id") and holder["boot_id"] != _boot_id():
        return False  # the machine has rebooted since
    pid = int(holder.get("pid", -1))
    started = _start_time(pid)
    if not started:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not holder.get("start_time")  # no /proc here: trust the pid
    return started == holder.get("start_time", started)


def describe(holder: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {when}: {holder.get('command', '?')})"


class RunLock:
    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.token = ""

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"pid": -1, "host": "?", "command": "unreadable lock file"}

    def acquire(self, force: bool = False, note=print) -> str:
        """Take the lock (returns its token) or raise CorefmError naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": _start_time(os.getpid()),
              "boot_id": _boot_id(), "time": time.time(), "token": secrets.token_hex(8),
              "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # released meanwhile
                alive = _alive(holder)
                if alive is False:
                    note(f"corefm: removing a stale lock of {self.path.parent}: {describe(holder)}, "
                         "which is no longer running")
                elif force:
                    note(f"corefm: --force: taking the lock of {self.path.parent} from {describe(holder)}")
                else:
                    where = "is still running" if alive else "cannot be checked from this host"
                    raise CorefmError(f"{self.path.parent} is in use by {describe(holder)}, which {where}; "
                                      "wait for that run to end (or pass --force if it is gone)") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.token = me["token"]
            return self.token
        raise CorefmError(f"could not take the lock {self.path}: other runs keep taking it")

    def check(self, token: str) -> None:
        """A rank's check that the lock is still the one its launcher took."""
        holder = self.holder()
        if holder is None or holder.get("token") != token:
            raise CorefmError(f"{self.path.parent} is no longer locked by this run's launcher"
                              + (f" but by {describe(holder)}" if holder else "") + "; stopping")

    def release(self) -> None:
        holder = self.holder()
        if self.token and holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.token = ""
