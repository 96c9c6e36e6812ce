"""Held-out evaluation for training runs and finished runs (``corefm eval``)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from corefm.data import build_eval_loader
from corefm.errors import CheckpointError, ConfigError
from corefm.train.comm import Comm
from corefm.train.config import Recipe, apply_overrides, parse_recipe
from corefm.train.placement import Placement


CPU = Placement(torch.device("cpu"), "gloo")


def evaluate(forward: Callable[..., dict], task, recipe: Recipe, dtype: torch.dtype, data: str = "",
             placement: Placement = CPU, comm: Comm | None = None,
             on_batch: Callable[[], None] | None = None) -> dict[str, float]:
    """One pass over ``data`` (default ``data.val``); sums are all-reduced so each sample counts once.

    ``forward`` is the DeepSpeed engine or the task itself: ``forward(batch, mode="eval")``. Batches
    move to ``placement.device``; the sums stay there (float64) until one all-reduce at the end, so
    the host waits for the device once per evaluation, not once per batch. ``on_batch`` is called
    before each forward (the trainer's stall report counts it as progress).
    """
    comm = comm or Comm(placement.comm_device)
    sums = eval_sums(forward, task, recipe, dtype, data, placement, comm, on_batch)
    # A rank without eval shards has no keys: agree on the union first.
    keys = sorted(set().union(*comm.gather_objects(sorted(sums))))
    zero = torch.zeros((), dtype=torch.float64, device=placement.device)
    totals = torch.stack([sums.get(k, zero) for k in keys]) if keys else zero.new_zeros(0)
    totals = comm.sum_(totals.to(comm.device)).tolist()
    return task.eval_metrics(dict(zip(keys, totals)))


def eval_sums(forward: Callable[..., dict], task, recipe: Recipe, dtype: torch.dtype, data: str,
              placement: Placement, comm: Comm,
              on_batch: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """This rank's additive eval sums, float64 tensors on ``placement.device`` (nothing read back)."""
    loader = build_eval_loader(data or recipe.data.val, recipe.data, rank=comm.rank, world_size=comm.world,
                               batch_size=recipe.eval.batch_size or recipe.train.micro_batch_size,
                               map_fn=task.sample_transform(False), collate_fn=task.collate,
                               pin_memory=placement.pin_memory)
    sums: dict[str, torch.Tensor] = {}
    it, spare, n, limit = iter(loader), None, 0, recipe.eval.max_batches
    forward.eval()
    # closing the pass stops its workers even when a forward raises (see corefm.train.trainer.train)
    with torch.no_grad(), contextlib.closing(it) if hasattr(it, "close") else contextlib.nullcontext():
        while True:
            batch = next(it, None) if not limit or n < limit else None
            # Every rank runs the same number of forwards (ZeRO-3 gathers parameters collectively);
            # a rank that ran out repeats a batch and throws the result away. The host knows whether
            # it has a batch, so the vote goes through the host group.
            if comm.host_sum([float(batch is not None)])[0] == 0:
                break
            spare = batch if batch is not None else spare
            if spare is None:  # this rank has no eval shards at all (more ranks than shards)
                continue
            if on_batch is not None:
                on_batch()
            out = forward(placement.move(spare, dtype), mode="eval")
            if batch is not None:
                n += 1
                for k, v in out.items():
                    v = torch.as_tensor(v).detach().to(placement.device, torch.float64)
                    sums[k] = sums[k] + v if k in sums else v
    forward.train()
    return sums


def load_run(run_dir: Path, overrides: list[str] | None = None, weights: str = "raw") -> tuple[Recipe, torch.nn.Module]:
    """The run's recipe and its task with ``model.safetensors`` (``weights="ema"``:
    ``model_ema.safetensors``) loaded (single process, fp32)."""
    from corefm.train.build import build_task

    recipe_file = run_dir / "recipe.json"
    if not recipe_file.is_file():
        raise CheckpointError(f"{run_dir} is not a corefm run folder (no recipe.json)")
    raw = json.loads(recipe_file.read_text())
    recipe = parse_recipe(apply_overrides(raw, overrides or []))
    task = build_task(recipe)
    if weights not in ("raw", "ema"):
        raise ConfigError(f"weights must be 'raw' or 'ema', got {weights!r}")
    path = run_dir / ("model_ema.safetensors" if weights == "ema" else "model.safetensors")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: run `corefm export {run_dir}` first"
                              + (" (in a run with ema.momentum set)" if weights == "ema" else ""))
    missing, unexpected = task.model.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the recipe's model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return recipe, task


def evaluate_run(run_dir: Path, data: str = "", overrides: list[str] | None = None,
                 weights: str = "raw") -> dict[str, float]:
    recipe, task = load_run(run_dir, overrides, weights)
    if not (data or recipe.data.val):
        raise ConfigError("no evaluation data: the recipe has no data.val; pass --data SHARDS")
    return evaluate(task, task, recipe, torch.float32, data)


def export_run(run_dir: Path, out: Path | None = None) -> list[Path]:
    """Consolidate the run's latest checkpoint into ``model.safetensors`` (or ``out``), and its weight
    EMA, where it keeps one, into ``model_ema.safetensors`` beside it. Returns the files written."""
    from corefm.train.checkpoint import latest_checkpoint, read_meta
    from corefm.train.ema import FILE
    from corefm.train.export import export_checkpoint, export_ema
    from corefm.train.build import build_task

    last = latest_checkpoint(run_dir / "checkpoints")
    if last is None:
        raise CheckpointError(f"{run_dir / 'checkpoints'} has no complete checkpoint")
    recipe = parse_recipe(read_meta(last)["recipe"])
    task = build_task(recipe)
    model = export_checkpoint(last, task, out or run_dir / "model.safetensors")
    if not (last / FILE).is_file():
        return [model]
    return [model, export_ema(last, task, model.with_name(model.stem + "_ema" + model.suffix))]
