"""Average the fp32 weights of a run's last K checkpoints (Apple released OpenELM as the mean of its last 5).

Each checkpoint is consolidated from its ZeRO shards (any stage) with
:func:`corefm.train.export.fp32_state_dict`, mapped to release names by the task's
``export_state_dict``, and summed in float64 so the mean does not depend on the order of the
additions. The result is one safetensors file whose metadata names the averaged steps; the
``openelm`` release writer reports them in the model card when that file is released.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from corefm.errors import CheckpointError, ConfigError
from corefm.train.export import fp32_state_dict, save_safetensors_atomic

AVERAGE_KEY = "averaged_steps"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoint folders (with meta.json), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        raise CheckpointError(f"{run_dir} has no checkpoints/ folder")
    return sorted(p for p in root.glob("step_*") if (p / "meta.json").is_file())


def _export_names(meta: dict):
    """The task's ``export_state_dict`` (task built on the meta device: no memory, no init cost)."""
    from corefm.train.build import build_task
    from corefm.train.config import parse_recipe

    with torch.device("meta"):
        return build_task(parse_recipe(meta["recipe"])).export_state_dict


def evaluate_state(recipe_dict: dict, state: dict[str, torch.Tensor]) -> dict[str, float] | None:
    """Held-out metrics of release-named weights on the recipe's data.val (None without one)."""
    from corefm.train.build import build_task
    from corefm.train.config import parse_recipe
    from corefm.train.evaluate import evaluate

    recipe = parse_recipe(recipe_dict)
    if not recipe.data.val:
        return None
    task = build_task(recipe)
    task.model.load_state_dict(state, strict=True)
    return evaluate(task, task, recipe, torch.float32)


def average_checkpoints(run_dir: Path, last: int = 5, out: Path | None = None,
                        evaluate: bool = True) -> tuple[Path, list[int], dict | None]:
    """Write the mean of the newest ``last`` checkpoints; returns (file, averaged steps, held-out metrics).

    With ``evaluate`` the mean is scored on the recipe's data.val and ``RUN_DIR/average.json``
    records file, steps and metrics (the model card reads it).
    """
    if last < 1:
        raise ConfigError(f"--last must be at least 1, got {last}")
    ckpts = complete_checkpoints(run_dir)
    if len(ckpts) < last:
        raise CheckpointError(f"{run_dir} keeps {len(ckpts)} complete checkpoint(s), fewer than --last {last}: "
                              f"train with checkpoint.keep_last >= {last} and checkpoint.every set")
    chosen = ckpts[-last:]
    metas = [json.loads((c / "meta.json").read_text()) for c in chosen]
    export = _export_names(metas[-1])
    total: dict[str, torch.Tensor] = {}
    for ckpt in tqdm(chosen, desc="average", unit="ckpt"):
        state = export(fp32_state_dict(ckpt))
        if total and set(state) != set(total):
            raise CheckpointError(f"{ckpt.name} holds other tensors than {chosen[0].name}: not the same model")
        for k, v in state.items():
            if k in total and total[k].shape != v.shape:
                raise CheckpointError(f"{ckpt.name}: {k} has shape {tuple(v.shape)}, {chosen[0].name} "
                                      f"{tuple(total[k].shape)}")
            total[k] = total[k] + v.double() if k in total else v.double()
    mean = {k: (v / last).float() for k, v in total.items()}
    steps = [int(m["step"]) for m in metas]
    out = out or run_dir / f"model_avg{last}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(mean, out, {"format": "pt", AVERAGE_KEY: ",".join(map(str, steps))})
    metrics = evaluate_state(metas[-1]["recipe"], mean) if evaluate else None
    record = {"file": str(out), "steps": steps, "eval": metrics}
    (run_dir / "average.json").write_text(json.dumps(record, indent=2))
    return out, steps, metrics
