"""Entry point of one training process: ``python -m corefm.train.worker RECIPE [--set k=v ...]``.

Started by :mod:`corefm.train.launcher` (or torchrun / DeepSpeed's launcher, which set the same
``RANK``/``WORLD_SIZE``/``MASTER_*`` variables). Bad input ends the process with one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from corefm.errors import CorefmError
from corefm.train.launcher import threads_per_process
from corefm.train.signals import StopFlag
from corefm.train.stall import dump_stacks_on_signal


def report(message: str) -> None:
    """Hand a one-line error to the launcher (which prints it once), or print it ourselves."""
    path = os.environ.get("COREFM_ERROR_FILE")
    if path:
        with open(path, "w") as f:
            f.write(message)
    else:
        print(f"corefm: error: {message}", file=sys.stderr)


# What gloo and NCCL say when the process at the other end of a collective is gone.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
              "remote process exited", "NCCL communicator was aborted")


def _peer_failure(e: BaseException) -> bool:
    return isinstance(e, RuntimeError) and any(text in str(e) for text in _PEER_GONE)


def main(argv: list[str] | None = None) -> int:
    # First, before the slow imports and the rendezvous: a stop signal during start-up is a request
    # to stop, not a kill (SLURM may send it at any moment).
    stop = StopFlag()
    dump_stacks_on_signal()  # kill -USR2 shows where this rank (or a data worker it forks) waits
    if "OMP_NUM_THREADS" not in os.environ:
        # Started by DeepSpeed's launcher (hostfile, pdsh), which passes no thread limit: share the
        # node's cores as corefm's launcher does; set before torch starts its thread pool.
        local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or "1"
        os.environ["OMP_NUM_THREADS"] = str(threads_per_process(int(local)))
    from corefm.data.errors import DataError, one_line  # importing corefm.data loads torch: seconds
    from corefm.quiet import quiet_libraries

    quiet_libraries()
    parser = argparse.ArgumentParser(prog="corefm.train.worker")
    parser.add_argument("recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--run-token", default="", help="the run-directory lock token of corefm's launcher")
    args = parser.parse_args(argv)
    from corefm.train.config import load_recipe
    from corefm.train.run_lock import RunLock
    from corefm.train.trainer import train

    lock = None
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        if os.environ.get("RANK", "0") == "0":
            lock = RunLock(recipe.run_dir)
            if args.run_token:
                lock.check(args.run_token)
            else:  # started by torchrun or DeepSpeed's launcher directly: rank 0 holds the lock itself
                lock.acquire(note=lambda m: print(m, file=sys.stderr))
        final = train(recipe, stop)
    except Exception as e:  # noqa: BLE001 - user errors become one line; bugs keep their traceback
        if isinstance(e, (CorefmError, DataError)):
            report(one_line(e))  # one_line also undoes DataLoader's re-wrapping of worker errors
            return 2
        if stop.requested or _peer_failure(e):
            # A rank that fails ends its process; a peer waiting for it in a collective then sees its
            # connection close (and the launcher stops the rest). The failed rank's own error is the
            # one the launcher shows; this rank only says why it ended, without a traceback.
            why = "after a stop request" if stop.requested else "a peer process ended"
            print(f"corefm: rank {os.environ.get('RANK', '0')} stopped: {why} ({type(e).__name__})", file=sys.stderr)
            return 1
        raise
    finally:
        if lock is not None and not args.run_token:
            lock.release()
    if os.environ.get("RANK", "0") == "0" and not final.get("interrupted"):
        print("corefm: final " + json.dumps({k: v for k, v in final.items() if k != "export"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
