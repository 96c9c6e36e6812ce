"""SIGTERM/SIGINT as a request to stop at the next step boundary, with a checkpoint.

SLURM's ``--signal`` and ``scancel``, a terminal's Ctrl-C and ``kill -TERM -- -PGID`` reach every
process of the run at once: the launcher, each rank and each rank's data workers. The launcher
forwards what it gets to the ranks, the workers ignore it (``corefm.data.loader``), and each rank
only records it here; the ranks then agree at the next step boundary, save and exit 0.
"""

from __future__ import annotations

import signal
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
    """Records the first stop signal; install it before the slow start-up (imports, rendezvous)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = self.signal or signum

    @property
    def requested(self) -> bool:
        return self.signal is not None
