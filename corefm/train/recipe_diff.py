"""What a resume may change: the recipe given now against the one the checkpoint was trained with.

A resumed run restores model, optimizer, schedule and data position, so most recipe keys cannot
change without the run silently becoming something else (a new width does not fit the weights, a
new ZeRO stage or precision does not fit DeepSpeed's shards, a new batch size breaks the exact
data position). Those are refused with one line naming each key. The keys below are honoured:
announced in one line, recorded in metrics.jsonl, and applied.
"""

from __future__ import annotations

from typing import Any

# Exact keys and whole sections ("section.*") a resume may change.
HONOURED = (
    "optim.lr",  # the schedule's base learning rate is rescaled from the resume point on
    "train.max_steps", "schedule.*",  # the schedule is rebuilt from the recipe, at the saved step
    "train.grad_clip",  # DeepSpeed reads it from the ds_config built now
    # also read from the new ds_config; the data position counts micro-batches, so it survives. It is
    # how a resume at another world size keeps the global batch (2 ranks x 1 -> 1 rank x 2).
    "train.grad_accum",
    "train.on_nonfinite", "train.max_consecutive_nonfinite", "train.deterministic",
    "train.stall_report_s",
    "log.*", "eval.*", "data.val", "checkpoint.every", "checkpoint.keep_last", "checkpoint.export_final",
    "checkpoint.resume", "model.compile", "model.attention_backend", "model.linear_backend",
)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) and v else {key: v})
    return out


def honoured(key: str) -> bool:
    return any(key == h or h.endswith(".*") and key.startswith(h[:-1]) for h in HONOURED)


def recipe_changes(old: dict, new: dict) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
    """(honoured, refused): key -> (old value, new value) for every key whose value differs."""
    a, b = _flatten(old), _flatten(new)
    diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    diff.pop("run_dir", None)  # the same folder, perhaps written another way
    good = {k: v for k, v in diff.items() if honoured(k)}
    return good, {k: v for k, v in diff.items() if k not in good}


def describe(changes: dict[str, tuple[Any, Any]], limit: int = 6) -> str:
    parts = [f"{k} {old!r} -> {new!r}" for k, (old, new) in list(changes.items())[:limit]]
    more = len(changes) - limit
    return ", ".join(parts) + (f" (and {more} more)" if more > 0 else "")
