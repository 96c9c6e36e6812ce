"""OpenELM's layer-wise scaling written out independently of the code under test."""

from __future__ import annotations

import numpy as np


def expected_widths(layers: int, d: int, head: int, groups: int = 4) -> tuple[list[int], list[int], list[int]]:
    """The paper's formulas written out with numpy's linspace (independent of the code under test)."""
    alphas = [round(float(v), 2) for v in np.linspace(0.5, 1.0, layers)]
    betas = [round(float(v), 2) for v in np.linspace(0.5, 4.0, layers)]

    def div(v, m):
        r = max(m, int(v + m / 2) // m * m)
        return r + m if r < 0.9 * v else r

    n_q = [div(d * a, head * groups) // head for a in alphas]
    return n_q, [h // groups for h in n_q], [div(d * b, 256) for b in betas]
