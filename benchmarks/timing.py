"""Timing shared by the benchmarks: alternate the compared functions so load on a shared machine
hits them alike, and keep the best round."""

from __future__ import annotations

import time
from typing import Callable


def timed(fns: list[Callable[[], object]], seconds: float, rounds: int = 3) -> list[tuple[float, float]]:
    """Per function: best (wall seconds, CPU seconds) per call over `rounds` rounds.

    The functions alternate within each round (after one warm-up call each), so a load spike on
    the shared machine hits all of them alike; CPU time (all threads of this process) is the
    steadier number when other jobs compete for the cores.
    """
    for fn in fns:
        fn()
    best = [(float("inf"), float("inf")) for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            n, wall, cpu = 0, time.perf_counter(), time.process_time()
            while True:
                fn()
                n += 1
                elapsed = time.perf_counter() - wall
                if elapsed >= seconds / rounds:
                    break
            per_call = (elapsed / n, (time.process_time() - cpu) / n)
            best[i] = (min(best[i][0], per_call[0]), min(best[i][1], per_call[1]))
    return best
