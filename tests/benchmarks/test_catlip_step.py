"""benchmarks/catlip_step.py runs end to end (its --quick setting), so it does not rot between runs."""

from __future__ import annotations

import sys

import pytest

from tests.e2e.util import ROOT, run

pytestmark = pytest.mark.slow


def test_catlip_step_benchmark_quick():
    r = run([sys.executable, str(ROOT / "benchmarks" / "catlip_step.py"), "--quick", "--vocab", "500"])
    assert r.returncode == 0, r.stderr[-3000:]
    table = r.stdout.splitlines()
    assert table[0].startswith("| image tower | batch | vocab | CLIP step ms | CatLIP step ms")
    assert table[2].startswith("| tiny 28 px | 128 | 500 |")
