"""Entry point of one training process: ``python -m corefm.train.worker RECIPE [--set k=v ...]``.

Started by :mod:`launch.runner` (or torchrun / DeepSpeed's launcher, which set the same
``RANK``/``WORLD_SIZE``/``MASTER_*`` variables). Bad input ends the process with one line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from corefm.errors import CorefmError
from corefm.quiet import quiet_libraries
from corefm.data.errors import DataError, one_line


def report(message: str) -> None:
    """Hand a one-line error to the launcher (which prints it once), or print it ourselves."""
    path = os.environ.get("COREFM_ERROR_FILE")
    if path:
        with open(path, "w") as f:
            f.write(message)
    else:
        print(f"corefm: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    parser = argparse.ArgumentParser(prog="corefm.train.worker")
    parser.add_argument("recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    from corefm.train.config import load_recipe
    from corefm.train.trainer import train

    try:
        final = train(load_recipe(args.recipe, args.overrides))
    except Exception as e:  # noqa: BLE001 - user errors become one line; bugs keep their traceback
        if isinstance(e, (CorefmError, DataError)):
            report(one_line(e))  # one_line also undoes DataLoader's re-wrapping of worker errors
            return 2
        raise
    if os.environ.get("RANK", "0") == "0" and not final.get("interrupted"):
        print("corefm: final " + json.dumps({k: v for k, v in final.items() if k != "export"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
