"""Bar charts of speed ratios against a peer (the benchmarks' pictures).

A chart is a list of :class:`Section`: a title, the peer every bar is measured against and the bars,
each ``(label, ratio)`` with ratio = our rate / the peer's rate (above 1: faster than the peer). Bars
are horizontal, annotated with their ratio, with the peer's 1.0 as a dashed line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from corefm.viz import DPI, check_output, new_figure, save_figure

WIDTH_IN = 8.0
BAR_IN = 0.34
SECTION_IN = 0.75  # a section's title, axis and tick labels
TITLE_IN = 0.75
NOTE_IN = 0.3
FASTER, SLOWER = "#2b8a3e", "#c92a2a"


@dataclass
class Section:
    title: str
    peer: str
    bars: list[tuple[str, float]]


def chart_pixels(sections: Sequence[Section], note: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of the chart :func:`ratio_chart` draws."""
    w, h = _inches(sections, note)
    return round(w * DPI), round(h * DPI)


def _inches(sections: Sequence[Section], note: bool) -> tuple[float, float]:
    body = sum(SECTION_IN + BAR_IN * len(s.bars) for s in sections)
    return WIDTH_IN, body + TITLE_IN + (NOTE_IN if note else 0.0)


def ratio_chart(sections: Sequence[Section], out: Path, title: str, note: str = "") -> Path:
    """One panel per section, bars of ratios against the section's peer; written to ``out``."""
    sections = [s for s in sections if s.bars]
    if not sections:
        raise ValueError(f"ratio_chart {title!r}: no bars to draw")
    out = check_output(Path(out), "chart")
    width, height = _inches(sections, bool(note))
    fig = new_figure(width, height)
    bottom_in = (NOTE_IN if note else 0.0) + 0.45  # the x label (and the note)
    area = height - TITLE_IN - bottom_in
    gap = 0.55  # between sections: the next one's title
    n = len(sections)
    mean_axes = (area - (n - 1) * gap) / n
    fig.subplots_adjust(left=0.4, right=0.95, top=1 - TITLE_IN / height, bottom=bottom_in / height,
                        hspace=gap / mean_axes)
    axes = fig.subplots(len(sections), 1, squeeze=False, gridspec_kw={"height_ratios": [len(s.bars) for s in sections]})
    top = max(max(r for _, r in s.bars) for s in sections)
    limit = max(1.25, top * 1.18)
    for ax, section in zip(axes[:, 0], sections):
        labels = [label for label, _ in section.bars]
        ratios = [ratio for _, ratio in section.bars]
        ys = list(range(len(ratios)))[::-1]
        ax.barh(ys, ratios, height=0.62, color=[FASTER if r >= 1 else SLOWER for r in ratios])
        ax.set_yticks(ys, labels, fontsize=8)
        for y, r in zip(ys, ratios):
            ax.text(r + limit * 0.01, y, f"{r:.2f}x", va="center", fontsize=8,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85})
        ax.axvline(1.0, color="0.25", linestyle="--", linewidth=1)
        ax.set_xlim(0, limit)
        ax.set_ylim(-0.6, len(ratios) - 0.4)
        ax.set_title(f"{section.title}  (vs {section.peer} = 1.0)", fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("rate relative to the peer (higher is faster)", fontsize=8)
    fig.suptitle(title, fontsize=11, y=1 - 0.1 / height, va="top")
    if note:
        fig.text(0.01, 0.06 / height, note, fontsize=7, color="0.3", va="bottom")
    return save_figure(fig, out, "chart")
