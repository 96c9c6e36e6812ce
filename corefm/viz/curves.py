"""Training curves from runs' ``metrics.jsonl`` (``corefm plot``).

A run folder's ``metrics.jsonl`` holds one JSON object a line, ``{"step", "kind", ...}``: ``kind``
``train`` (the log window's means, ``lr``, speeds), ``eval`` (held-out metrics) and events such as
``world_size_change`` and ``recipe_change`` written when a run resumes. A resumed run may have logged
a step twice; the latest record of a (kind, step) wins, so every step is drawn once.

Metric names: a train metric by its key (``loss``, ``lr``; ``train.loss`` also works), an eval metric
as ``eval.<key>`` (``eval.accuracy``); a bare key only eval records carry means that one.

The x axis is the step, or with ``x="samples"``/``"tokens"`` what the run had seen by then. The
trainer logs rates, not totals, so both are derived from what the run folder records: samples per
step = ``train.micro_batch_size`` x ``train.grad_accum`` x ranks (``recipe.json``; the rank count from
a checkpoint's ``meta.json``, and changes of either from the resume events), tokens per window =
that window's samples x ``tokens_per_s / samples_per_s`` (the two rates share the window's clock).
Runs with multi-scale batches (``data.scales``) change the batch size every step and are refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from corefm.errors import ConfigError
from corefm.viz import check_output, new_figure, save_figure

X_AXES = ("step", "samples", "tokens")
# eval keys that count what was evaluated rather than measure it: left out of the default picture
COUNT_KEYS = frozenset({"samples", "tokens", "zero_shot_samples", "count"})
MAX_DEFAULT_PANELS = 6
PANEL_IN = (6.4, 3.6)  # inches per subplot; at corefm.viz.DPI, 640 x 360 pixels


@dataclass
class RunMetrics:
    """One run's records: ``records[kind][step]`` (latest wins) and its events in file order."""

    path: Path
    name: str
    records: dict[str, dict[int, dict]] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)

    def keys(self, kind: str) -> list[str]:
        seen: dict[str, None] = {}
        for rec in self.records.get(kind, {}).values():
            for k, v in rec.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    seen.setdefault(k)
        return list(seen)

    def metric_names(self) -> list[str]:
        return self.keys("train") + [f"eval.{k}" for k in self.keys("eval")]

    def series(self, kind: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of ``key`` in ``kind`` records, by step; steps that lack the key are left out."""
        rows = sorted((s, r[key]) for s, r in self.records.get(kind, {}).items()
                      if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool))
        steps = np.array([s for s, _ in rows], dtype=np.int64)
        return steps, np.array([float(v) for _, v in rows], dtype=np.float64)


def load_run(path: Path, name: str = "") -> RunMetrics:
    """A run folder (or its metrics.jsonl) -> :class:`RunMetrics`; one ConfigError line when unusable."""
    path = Path(path)
    file = path if path.is_file() else path / "metrics.jsonl"
    folder = file.parent
    if not folder.exists():
        raise ConfigError(f"{path} does not exist")
    if not file.is_file():
        raise ConfigError(f"{folder} has no metrics.jsonl (not a corefm run folder, or trained with log.jsonl: false)")
    run = RunMetrics(folder, name or folder.name)
    lines = file.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a run killed mid-write leaves its last line cut short
                break
            raise ConfigError(f"{file}, line {i + 1}: not JSON ({line[:60]!r})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise ConfigError(f"{file}, line {i + 1}: a record needs an integer step ({line[:60]!r})")
        kind = rec.get("kind", "train")
        if kind in ("train", "eval"):
            run.records.setdefault(kind, {})[rec["step"]] = rec  # a step logged again: the latest wins
        else:
            run.events.append(rec)
    if not run.records:
        raise ConfigError(f"{file} holds no train or eval record yet")
    return run


def display_names(paths: Sequence[Path]) -> list[str]:
    """Folder names, with their parents added where two runs share a name."""
    parts = [Path(p).resolve().parts[1:] for p in paths]  # without the root
    names = [p[-1] if p else "/" for p in parts]
    depth = 1
    while len(set(names)) < len(names) and depth < max(map(len, parts)):
        depth += 1
        names = ["/".join(p[-depth:]) for p in parts]
    counts: dict[str, int] = {}
    for i, n in enumerate(names):  # the same folder named twice
        counts[n] = counts.get(n, 0) + 1
        if counts[n] > 1:
            names[i] = f"{n} ({counts[n]})"
    return names


def resolve_metric(name: str, runs: Sequence[RunMetrics]) -> tuple[str, str]:
    """``loss`` / ``train.loss`` / ``eval.accuracy`` -> (kind, key); unknown names list the known ones."""
    kind, _, key = name.partition(".")
    if key and kind in ("train", "eval") and any(key in r.keys(kind) for r in runs):
        return kind, key
    if any(name in r.keys("train") for r in runs):
        return "train", name
    if any(name in r.keys("eval") for r in runs):
        return "eval", name
    known = list(dict.fromkeys(m for r in runs for m in r.metric_names()))
    where = runs[0].path if len(runs) == 1 else f"any of the {len(runs)} runs"
    raise ConfigError(f"unknown metric {name!r} in {where} (known: {', '.join(known)})")


def default_metrics(runs: Sequence[RunMetrics]) -> list[str]:
    """Training loss and the held-out metrics (not the sample counts), at most six panels."""
    names = []
    if any("loss" in r.keys("train") for r in runs):
        names.append("loss")
    for r in runs:
        names += [f"eval.{k}" for k in r.keys("eval") if k not in COUNT_KEYS and f"eval.{k}" not in names]
    if not names:  # a run that logs no loss (or only evaluations): its first metric
        names = [runs[0].metric_names()[0]]
    return names[:MAX_DEFAULT_PANELS]


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start); non-finite values are skipped."""
    if window <= 1 or len(values) == 0:
        return values
    ok = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(ok, values, 0.0))])
    counts = np.concatenate([[0.0], np.cumsum(ok)])
    i = np.arange(len(values))
    lo = np.maximum(0, i - window + 1)
    n = counts[i + 1] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[i + 1] - sums[lo]) / np.maximum(n, 1), np.nan)


# --- samples and tokens seen -------------------------------------------------------------------
def _world_from_checkpoints(run: RunMetrics) -> int | None:
    for meta in sorted((run.path / "checkpoints").glob("step_*/meta.json"), reverse=True):
        try:
            return int(json.loads(meta.read_text())["world_size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def batch_segments(run: RunMetrics) -> list[tuple[int, int]]:
    """[(step, global batch of the steps after it)], from the recipe, the ranks and the resume events."""
    recipe_file = run.path / "recipe.json"
    if not recipe_file.is_file():
        raise ConfigError(f"--x samples/tokens: {run.path} has no recipe.json to read its batch size from")
    recipe = json.loads(recipe_file.read_text())
    if (recipe.get("data") or {}).get("scales"):
        raise ConfigError(f"--x samples/tokens: {run.path} trains with data.scales (a batch size per step that "
                          "metrics.jsonl does not record); plot it against --x step")
    train = recipe.get("train") or {}
    micro = int(train.get("micro_batch_size", 0))
    accum_changes = [e for e in run.events if e.get("kind") == "recipe_change" and "train.grad_accum" in e]
    world_changes = [e for e in run.events if e.get("kind") == "world_size_change"]
    accum = int(accum_changes[0]["train.grad_accum"][0]) if accum_changes else int(train.get("grad_accum", 1))
    world = int(world_changes[0]["from"]) if world_changes else _world_from_checkpoints(run)
    if world is None:
        raise ConfigError(f"--x samples/tokens: no checkpoint in {run.path / 'checkpoints'} records how many "
                          "ranks trained the run; plot it against --x step")
    segments = [(0, micro * accum * world)]
    for e in sorted(accum_changes + world_changes, key=lambda e: e["step"]):
        if e.get("kind") == "world_size_change":
            world = int(e["to"])
        else:
            accum = int(e["train.grad_accum"][1])
        if segments[-1][0] == int(e["step"]):  # two changes at one resume: the batch after both
            segments.pop()
        segments.append((int(e["step"]), micro * accum * world))
    return segments


def samples_at(steps: np.ndarray, segments: list[tuple[int, int]]) -> np.ndarray:
    """Samples seen after each step in ``steps`` (the batch of the segment each step falls in)."""
    steps = np.asarray(steps, dtype=np.float64)
    out = np.zeros_like(steps)
    for i, (start, batch) in enumerate(segments):
        end = segments[i + 1][0] if i + 1 < len(segments) else math.inf
        out += batch * np.clip(np.minimum(steps, end) - start, 0, None)
    return out


def x_values(run: RunMetrics, steps: np.ndarray, axis: str) -> np.ndarray:
    if axis == "step":
        return steps.astype(np.float64)
    segments = batch_segments(run)
    if axis == "samples":
        return samples_at(steps, segments)
    t_steps, tok_rate = run.series("train", "tokens_per_s")
    s_steps, smp_rate = run.series("train", "samples_per_s")
    all_steps = np.array(sorted(run.records.get("train", {})), dtype=np.int64)
    if len(t_steps) == 0 or len(t_steps) != len(all_steps) or not np.array_equal(t_steps, s_steps):
        raise ConfigError(f"--x tokens: {run.path} logs no tokens_per_s beside samples_per_s on every training "
                          "record (its task counts no tokens); plot it against --x step or samples")
    seen = samples_at(t_steps, segments)
    window = np.diff(np.concatenate([[0.0], seen]))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_sample = np.where(smp_rate > 0, tok_rate / smp_rate, 0.0)
    tokens = np.cumsum(window * per_sample)
    return np.interp(steps.astype(np.float64), np.concatenate([[0.0], t_steps]), np.concatenate([[0.0], tokens]))


# --- drawing -----------------------------------------------------------------------------------
def grid_shape(panels: int) -> tuple[int, int]:
    cols = 1 if panels == 1 else 2
    return math.ceil(panels / cols), cols


def figure_pixels(panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a picture with ``panels`` subplots."""
    from corefm.viz import DPI

    rows, cols = grid_shape(panels)
    return round(cols * PANEL_IN[0] * DPI), round(rows * PANEL_IN[1] * DPI)


def plot_runs(paths: Sequence[Path], out: Path, metrics: Sequence[str] = (), smooth: int = 0, x: str = "step",
              title: str = "") -> Path:
    """One subplot per metric, every run overlaid (its folder name in the legend); eval points marked.

    ``smooth`` > 1 draws the training curves as a trailing moving average over that many logged points,
    the raw values faint behind them. Returns ``out``.
    """
    if x not in X_AXES:
        raise ConfigError(f"--x {x!r}: one of {', '.join(X_AXES)}")
    if smooth < 0:
        raise ConfigError(f"--smooth {smooth}: a window of logged points, 0 or 1 for none")
    if not paths:
        raise ConfigError("plot: name at least one run folder")
    runs = [load_run(Path(p), n) for p, n in zip(paths, display_names(paths))]
    names = list(metrics) or default_metrics(runs)
    panels = [(m, *resolve_metric(m, runs)) for m in names]
    xs = {id(r): {} for r in runs}  # resolve every x axis before drawing: a bad --x is one line, no file
    for r in runs:
        for kind in r.records:
            steps = np.array(sorted(r.records[kind]), dtype=np.int64)
            xs[id(r)][kind] = dict(zip(steps.tolist(), x_values(r, steps, x).tolist()))
    out = check_output(Path(out))

    rows, cols = grid_shape(len(panels))
    fig = new_figure(cols * PANEL_IN[0], rows * PANEL_IN[1], layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    x_label = {"step": "step", "samples": "samples seen", "tokens": "tokens seen"}[x]
    for ax, (_, kind, key) in zip(axes, panels):
        for i, run in enumerate(runs):
            steps, values = run.series(kind, key)
            if len(steps) == 0:
                continue
            at = np.array([xs[id(run)][kind][s] for s in steps.tolist()])
            color = f"C{i % 10}"
            if kind == "eval":
                ax.plot(at, values, color=color, marker="o", markersize=5, linewidth=1.2, label=run.name)
            elif smooth > 1:
                ax.plot(at, values, color=color, linewidth=0.8, alpha=0.3)
                ax.plot(at, moving_average(values, smooth), color=color, linewidth=1.6, label=run.name)
            else:
                ax.plot(at, values, color=color, linewidth=1.4, label=run.name)
        shown = f"eval {key}" if kind == "eval" else key
        ax.set_title(shown + (f" (moving average of {smooth})" if smooth > 1 and kind == "train" else ""),
                     fontsize=11)
        ax.set_xlabel(x_label)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)
