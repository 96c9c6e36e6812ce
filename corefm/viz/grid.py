"""Image grids: one row per example, one column per view (image, label, prediction, ...).

Projects turn their tensors into RGB arrays with the helpers here (:func:`denormalize`,
:func:`colorize`, :func:`heat`, :func:`grey`, :func:`overlay`) and hand :func:`save_grid` a table of
:class:`Panel`; what is specific to a project (a SAM prompt drawn on the image, a class legend's
names) stays in the project, through ``Panel.draw`` and ``legend``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from corefm.viz import DPI, check_output, new_figure, save_figure

CELL_IN = 1.9  # inches per panel
HEADER_IN = 0.35  # column titles
TITLE_IN = 0.4
ROW_LABEL_IN = 0.9
LEGEND_ROW_IN = 0.3
LEGEND_COLUMNS = 5


@dataclass
class Panel:
    """One cell: an (H, W) grey or (H, W, 3) RGB image (floats in [0, 1] or uint8), or None for an empty
    cell; ``draw(ax)`` adds marks in the image's pixel coordinates; ``note`` is written under it."""

    image: np.ndarray | None
    draw: Callable[[Any], None] | None = None
    note: str = ""


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def palette(n: int) -> np.ndarray:
    """(n, 3) distinct RGB colours in [0, 1]: black first (background), then matplotlib's tab20."""
    from matplotlib import colormaps

    tab = colormaps["tab20"].colors
    base = [(0.0, 0.0, 0.0)] + [tab[i] for i in (0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19)]
    while len(base) < n:  # more classes than tab20 holds: evenly spaced hues
        from matplotlib.colors import hsv_to_rgb

        k = len(base)
        base.append(tuple(hsv_to_rgb(((k * 0.618) % 1.0, 0.65, 0.9))))
    return np.array(base[:n], dtype=np.float64)


def colorize(labels: Any, n: int, ignore: int | None = None, ignore_color=(1.0, 1.0, 1.0)) -> np.ndarray:
    """(H, W) class ids in [0, n) -> (H, W, 3) RGB with :func:`palette`; ``ignore`` pixels in ``ignore_color``."""
    labels = _as_numpy(labels).astype(np.int64)
    colours = palette(n)
    out = colours[np.clip(labels, 0, n - 1)]
    if ignore is not None:
        out[labels == ignore] = ignore_color
    return out


def heat(values: Any, vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis") -> np.ndarray:
    """(H, W) values -> (H, W, 3) RGB through ``cmap`` over [vmin, vmax] (default: the finite values' range)."""
    from matplotlib import colormaps

    v = _as_numpy(values).astype(np.float64)
    finite = v[np.isfinite(v)]
    lo = float(finite.min()) if vmin is None and finite.size else (vmin if vmin is not None else 0.0)
    hi = float(finite.max()) if vmax is None and finite.size else (vmax if vmax is not None else 1.0)
    scaled = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    return colormaps[cmap](np.nan_to_num(scaled))[..., :3]


def grey(values: Any) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) grey RGB."""
    v = np.clip(_as_numpy(values).astype(np.float64), 0.0, 1.0)
    return np.repeat(v[..., None], 3, axis=-1)


def denormalize(image: Any, mean: Sequence[float], std: Sequence[float], scale: float = 1.0) -> np.ndarray:
    """A normalised (3, H, W) image -> (H, W, 3) RGB in [0, 1]: ``(x * std + mean) / scale``
    (``scale`` 255 for SAM's 0-255 statistics)."""
    x = _as_numpy(image).astype(np.float64)
    x = x * np.asarray(std, dtype=np.float64)[:, None, None] + np.asarray(mean, dtype=np.float64)[:, None, None]
    return np.clip(np.transpose(x / scale, (1, 2, 0)), 0.0, 1.0)


def resize_nearest(a: Any, size: tuple[int, int]) -> np.ndarray:
    """(h, w[, C]) -> (H, W[, C]) by nearest neighbour (masks onto their image)."""
    a = _as_numpy(a)
    h, w = a.shape[:2]
    rows = np.minimum((np.arange(size[0]) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(size[1]) * w / size[1]).astype(np.int64), w - 1)
    return a[rows][:, cols]


def overlay(rgb: Any, mask: Any, color=(1.0, 0.2, 0.2), alpha: float = 0.5) -> np.ndarray:
    """``rgb`` (H, W, 3) with the pixels of 0/1 ``mask`` (any size: resized by nearest) tinted ``color``."""
    rgb = _as_numpy(rgb).astype(np.float64)
    if rgb.max() > 1.0:
        rgb = rgb / 255.0
    m = _as_numpy(mask) > 0.5
    if m.shape != rgb.shape[:2]:
        m = resize_nearest(m, rgb.shape[:2])
    out = rgb.copy()
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, dtype=np.float64)
    return out


def grid_pixels(rows: int, cols: int, *, title: bool = False, columns: bool = False, row_labels: bool = False,
                legend: int = 0) -> tuple[int, int]:
    """(width, height) in pixels of the picture :func:`save_grid` writes for this table."""
    w, h = _grid_inches(rows, cols, title, columns, row_labels, legend)
    return round(w * DPI), round(h * DPI)


def _grid_inches(rows: int, cols: int, title: bool, columns: bool, row_labels: bool,
                 legend: int) -> tuple[float, float]:
    width = cols * CELL_IN + (ROW_LABEL_IN if row_labels else 0.0)
    height = (rows * CELL_IN + (TITLE_IN if title else 0.0) + (HEADER_IN if columns else 0.0)
              + LEGEND_ROW_IN * math.ceil(legend / LEGEND_COLUMNS) + (0.15 if legend else 0.0))
    return width, height


def save_grid(rows: Sequence[Sequence[Panel | np.ndarray | None]], out: Path, columns: Sequence[str] = (),
              row_labels: Sequence[str] = (), legend: Sequence[tuple[str, Any]] = (), title: str = "") -> Path:
    """Write the table of panels to ``out`` (:func:`grid_pixels` gives its size); ``legend``: (name, RGB)
    swatches under the grid (a class legend)."""
    from matplotlib.patches import Patch

    if not rows or not any(rows):
        raise ValueError("save_grid: no rows to draw")
    n_cols = max(len(r) for r in rows)
    out = check_output(Path(out), "examples picture")
    width, height = _grid_inches(len(rows), n_cols, bool(title), bool(columns), bool(row_labels), len(legend))
    fig = new_figure(width, height)
    top = (TITLE_IN if title else 0.0) + (HEADER_IN if columns else 0.0)
    bottom = LEGEND_ROW_IN * math.ceil(len(legend) / LEGEND_COLUMNS) + (0.15 if legend else 0.0)
    left = ROW_LABEL_IN if row_labels else 0.0
    fig.subplots_adjust(left=left / width, right=1 - 0.02 / width, top=1 - top / height,
                        bottom=bottom / height, wspace=0.04, hspace=0.12)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            cell = row[c] if c < len(row) else None
            panel = cell if isinstance(cell, Panel) else Panel(cell)
            if panel.image is None:
                for side in ax.spines.values():
                    side.set_visible(False)
            else:
                img = _as_numpy(panel.image)
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0 if img.ndim == 2 else None,
                          vmax=1 if img.ndim == 2 else None, interpolation="nearest")
                if panel.draw is not None:
                    panel.draw(ax)
                    ax.set_xlim(-0.5, img.shape[1] - 0.5)
                    ax.set_ylim(img.shape[0] - 0.5, -0.5)
            if panel.note:
                ax.text(0.5, 0.5 if panel.image is None else -0.02, panel.note, transform=ax.transAxes,
                        ha="center", va="center" if panel.image is None else "top", fontsize=7)
            if r == 0 and c < len(columns):
                ax.set_title(columns[c], fontsize=9)
        if r < len(row_labels):
            axes[r][0].text(-0.06, 0.5, row_labels[r], transform=axes[r][0].transAxes, ha="right", va="center",
                            fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    if legend:
        handles = [Patch(facecolor=tuple(np.asarray(color, dtype=float)), edgecolor="0.5", label=name)
                   for name, color in legend]
        fig.legend(handles=handles, loc="lower center", ncol=min(LEGEND_COLUMNS, len(handles)), fontsize=7,
                   frameon=False, bbox_to_anchor=(0.5, 0.0))
    return save_figure(fig, out, "examples picture")
