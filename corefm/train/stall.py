"""Where a stuck rank is stuck: its stacks, and its data workers', printed before the collective
timeout ends the run.

A rank that stops making progress (a data worker that never answers, a rank that took another path
through a collective) shows up only on its peers, as "Timed out ... for recv operation" ten minutes
later, with nothing about the rank that was stuck. Every rank therefore:

* answers SIGUSR2 by printing the Python stacks of all its threads to stderr (``kill -USR2 PID``
  on any rank, at any time). The handler is faulthandler's, which runs without the interpreter
  lock, so it answers even when the rank is blocked; data-loader workers are forked from the rank
  and inherit it, including one that never reached its own start-up code.
* runs a :class:`StallReport`: when one phase (a training step, an evaluation, a checkpoint save)
  has gone on for ``train.stall_report_s`` seconds, it prints one warning line naming the phase,
  then its own stacks, and sends SIGUSR2 to its child processes forked from it (the data workers), so the log shows where each of them waits.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading

DUMP_SIGNAL = signal.SIGUSR2


def dump_stacks_on_signal() -> None:
    """Install the SIGUSR2 -> stacks handler in this process (and so in every process it forks)."""
    faulthandler.register(DUMP_SIGNAL, file=sys.stderr, all_threads=True, chain=False)


class StallReport:
    """A watchdog thread. The trainer calls :meth:`enter` as each phase begins ("a training step",
    "evaluation", ...) and may :meth:`beat` inside one (each evaluation batch); ``seconds`` with
    neither gets the report once. ``seconds`` <= 0 disables it. A report is a stack listing, not
    an error, and names what the rank was doing."""

    def __init__(self, seconds: float, rank: int) -> None:
        self.seconds, self.rank = seconds, rank
        self.phase = "start-up"
        self._beat = threading.Event()
        self._closed = False
        if seconds > 0:
            threading.Thread(target=self._watch, name="corefm-stall-report", daemon=True).start()

    def enter(self, phase: str) -> None:
        self.phase = phase
        self._beat.set()

    def beat(self) -> None:
        """Progress inside a phase (an evaluation batch): its clock starts again."""
        self._beat.set()

    def close(self) -> None:
        self._closed = True
        self._beat.set()

    def _watch(self) -> None:
        reported = False
        while not self._closed:
            if self._beat.wait(self.seconds):
                self._beat.clear()
                reported = False
            elif not reported:
                reported = True
                self.report()

    def report(self) -> None:
        children = _children()
        print(f"corefm: warning: rank {self.rank} has been in {self.phase} for {self.seconds:g} s "
              "(train.stall_report_s); its stacks follow"
              + (f", then its data workers' (pids {', '.join(map(str, children))})" if children else ""),
              file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        for pid in children:
            try:
                os.kill(pid, DUMP_SIGNAL)
            except ProcessLookupError:
                pass


def _children() -> list[int]:
    """This rank's forked children (its data workers): they run our command line and inherited the
    SIGUSR2 handler. Anything it started with exec (a compiler pool) is left alone, since SIGUSR2
    would end a process that has no handler for it."""
    import psutil

    try:
        me = psutil.Process()
        ours = me.cmdline()
        return [c.pid for c in me.children() if c.cmdline() == ours]
    except psutil.Error:
        return []
