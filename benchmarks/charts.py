"""Redraw every benchmark chart from the JSON already in benchmarks/results/ (no benchmark is rerun).

    python benchmarks/charts.py [RESULTS_DIR]

Each ``<name>.json`` a chart is made of (benchmarks/_chart.py) gets ``<name>.png`` beside it: the
ratios of corefm's rates to the peer the benchmark compares against.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

from benchmarks._chart import chart_file  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0]) if argv else RESULTS
    drawn = [p for p in (chart_file(j) for j in sorted(folder.glob("*.json"))) if p is not None]
    skipped = sorted({j.name for j in folder.glob("*.json")} - {p.with_suffix(".json").name for p in drawn})
    if skipped:
        print(f"no chart for: {', '.join(skipped)}")
    print(f"{len(drawn)} charts in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
