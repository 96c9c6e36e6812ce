"""Held-out evaluation for training runs and finished runs (``corefm eval``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from corefm.data import build_eval_loader
from corefm.errors import CheckpointError, ConfigError
from corefm.train.config import Recipe, apply_overrides, parse_recipe


def to_engine(batch: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Floating tensors follow the compute dtype (bf16 engines take bf16 inputs)."""
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def all_sum(values: list[float]) -> list[float]:
    """Sum a few scalars over ranks (identity without a process group)."""
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def evaluate(forward: Callable[..., dict], task, recipe: Recipe, dtype: torch.dtype,
             data: str = "") -> dict[str, float]:
    """One pass over ``data`` (default ``data.val``); sums are all-reduced so each sample counts once.

    ``forward`` is the DeepSpeed engine or the task itself: ``forward(batch, mode="eval")``.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    loader = build_eval_loader(data or recipe.data.val, recipe.data, rank=rank, world_size=world,
                               batch_size=recipe.eval.batch_size or recipe.train.micro_batch_size,
                               map_fn=task.sample_transform(False), collate_fn=task.collate)
    sums: dict[str, float] = {}
    it, spare, n, limit = iter(loader), None, 0, recipe.eval.max_batches
    forward.eval()
    with torch.no_grad():
        while True:
            batch = next(it, None) if not limit or n < limit else None
            # Every rank runs the same number of forwards (ZeRO-3 gathers parameters collectively);
            # a rank that ran out repeats a batch and throws the result away.
            if all_sum([float(batch is not None)])[0] == 0:
                break
            spare = batch if batch is not None else spare
            if spare is None:  # this rank has no eval shards at all (more ranks than shards)
                continue
            out = forward(to_engine(spare, dtype), mode="eval")
            if batch is not None:
                n += 1
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
    forward.train()
    keys = sorted(sums)
    if dist.is_initialized():  # a rank without eval shards has no keys: agree on the union first
        every: list[list[str]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(every, keys)
        keys = sorted(set().union(*every))
    return task.eval_metrics(dict(zip(keys, all_sum([sums.get(k, 0.0) for k in keys]))))


def load_run(run_dir: Path, overrides: list[str] | None = None) -> tuple[Recipe, torch.nn.Module]:
    """The run's recipe and its task with ``model.safetensors`` loaded (single process, fp32)."""
    from corefm.train.build import build_task

    recipe_file = run_dir / "recipe.json"
    if not recipe_file.is_file():
        raise CheckpointError(f"{run_dir} is not a corefm run folder (no recipe.json)")
    raw = json.loads(recipe_file.read_text())
    recipe = parse_recipe(apply_overrides(raw, overrides or []))
    task = build_task(recipe)
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing: run `corefm export {run_dir}` first")
    missing, unexpected = task.model.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match the recipe's model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return recipe, task


def evaluate_run(run_dir: Path, data: str = "", overrides: list[str] | None = None) -> dict[str, float]:
    recipe, task = load_run(run_dir, overrides)
    if not (data or recipe.data.val):
        raise ConfigError("no evaluation data: the recipe has no data.val; pass --data SHARDS")
    return evaluate(task, task, recipe, torch.float32, data)


def export_run(run_dir: Path, out: Path | None = None) -> Path:
    """Consolidate the run's latest checkpoint into ``model.safetensors``."""
    from corefm.train.checkpoint import latest_checkpoint
    from corefm.train.export import export_checkpoint
    from corefm.train.build import build_task

    last = latest_checkpoint(run_dir / "checkpoints")
    if last is None:
        raise CheckpointError(f"{run_dir / 'checkpoints'} has no complete checkpoint")
    recipe = parse_recipe(json.loads((last / "meta.json").read_text())["recipe"])
    return export_checkpoint(last, build_task(recipe), out or run_dir / "model.safetensors")
