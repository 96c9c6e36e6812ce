"""Pictures: training curves (:mod:`.curves`), image grids of dense predictions (:mod:`.grid`) and
benchmark bar charts (:mod:`.charts`), drawn with matplotlib's Agg renderer into files.

Nothing here needs a display or touches pyplot's global state: every figure is a
:class:`matplotlib.figure.Figure` with its own Agg canvas, so drawing is safe in a training
process, a test or a headless machine. matplotlib is imported only when something is drawn.
"""

from __future__ import annotations

from pathlib import Path

from corefm.errors import ConfigError

DPI = 100
FORMATS = (".png", ".svg", ".pdf")


def new_figure(width_in: float, height_in: float, **kwargs):
    """A Figure of exactly ``width_in`` x ``height_in`` inches at :data:`DPI`, on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def check_output(out: Path, what: str = "--out") -> Path:
    """``out``'s folder made and writable, its suffix one matplotlib writes; else one ConfigError line."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"{what} {out}: the file name must end in {', '.join(FORMATS)}")
    if out.is_dir():
        raise ConfigError(f"{what} {out} is a folder; give a file name ending in .png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.writable"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{what} {out} cannot be written ({e.strerror or type(e).__name__})") from None
    return out


def save_figure(fig, out: Path, what: str = "--out") -> Path:
    """Write ``fig`` to ``out`` at its own size (no tight bounding box: the pixel size is the figure's)."""
    out = Path(out)
    try:
        fig.savefig(out, dpi=DPI)
    except OSError as e:
        raise ConfigError(f"{what} {out} cannot be written ({e.strerror or type(e).__name__})") from None
    return out
