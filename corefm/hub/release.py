"""Write a release folder from a finished run and push it to the Hub (or list what would go).

The generic release holds ``model.safetensors`` (fp32, names as the model's state dict),
``config.json`` (the recipe's model section, with ``corefm_model`` naming the registered
builder), ``recipe.json`` and a generated ``README.md`` model card. Projects whose users expect
another layout (OpenELM for ``transformers``, CLIP for ``open_clip``) register their own writer
with :func:`register_release` in the module their ``corefm.releases`` entry point names (see
:mod:`corefm.registry`); a model that declares none gets the generic writer. ``--weights ema``
releases a run's weight EMA through the same writer (:func:`ema_view`). Whatever the writer, the
release then gets ``training_curve.png`` (drawn from the run's ``metrics.jsonl``) and the dense-head
example grids an eval left in ``RUN/examples/`` (``--save-examples``), both shown in ``README.md``
(:func:`card_pictures`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from corefm.errors import CheckpointError, ConfigError, CorefmError
from corefm.registry import MODELS, declared, import_declared
from corefm.train.config import model_architecture

ReleaseWriter = Callable[[Path, Path, dict], list[Path]]
WRITERS: dict[str, ReleaseWriter] = {}


def register_release(model_name: str):
    """Decorator: ``writer(run_dir, out_dir, recipe) -> files`` for runs of ``model_name``."""
    def wrap(fn: ReleaseWriter) -> ReleaseWriter:
        WRITERS[model_name] = fn
        return fn
    return wrap


def writer_for(model_name: str) -> ReleaseWriter:
    """The release writer a model declares (importing only its module); the generic writer for a
    known model that declares none. An unknown model name, or a declared writer that does not
    register, is an error rather than a generic release in the wrong layout."""
    if model_name not in WRITERS:
        ep = import_declared("release", model_name)
        if ep is not None and model_name not in WRITERS:
            raise CorefmError(f"{ep.module} is declared as the release writer of model {model_name!r} "
                              "but did not register one")
        if ep is None and model_name not in MODELS and model_name not in declared("model"):
            known = sorted(set(MODELS) | set(declared("model")))
            raise ConfigError(f"release: unknown model {model_name!r} in the run's recipe (known: {', '.join(known)})")
    return WRITERS.get(model_name, write_generic)


def read_run(run_dir: Path) -> tuple[dict, dict]:
    """The run's resolved recipe and final metrics; a clear error if the run did not finish."""
    recipe_file, final_file = run_dir / "recipe.json", run_dir / "final.json"
    if not recipe_file.is_file():
        raise CheckpointError(f"{run_dir} is not a corefm run folder (no recipe.json)")
    if not final_file.is_file() or not (run_dir / "model.safetensors").is_file():
        raise CheckpointError(f"{run_dir} has no final.json/model.safetensors: finish the run "
                              f"or export it with `corefm export {run_dir}`")
    return json.loads(recipe_file.read_text()), json.loads(final_file.read_text())


def model_card(recipe: dict, final: dict, title: str, extra: str = "") -> str:
    model = recipe["model"]
    rows = "\n".join(f"| {k} | {v} |" for k, v in model.items())
    data = recipe.get("data", {})
    train = recipe.get("train", {})
    steps = final.get("step", 0)
    seen = steps * train.get("micro_batch_size", 0) * train.get("grad_accum", 1)
    evals = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                      for k, v in (final.get("eval") or {}).items()) or "| (none) | |"
    return f"""---
library_name: corefm
tags: [corefm, {recipe['task']['name']}, {model['name']}]
---
# {title}

Trained with corefm: recipe task `{recipe['task']['name']}`, model `{model['name']}`.

## Architecture
| field | value |
|---|---|
{rows}

## Training
- data: `{data.get('train', '')}` (validation: `{data.get('val', '')}`)
- steps: {steps}, samples seen per rank group: {seen} x ranks
- optimizer: AdamW lr {recipe.get('optim', {}).get('lr')}, schedule {recipe.get('schedule', {}).get('name')}
- final training loss: {final.get('loss')}

## Evaluation (held-out)
| metric | value |
|---|---|
{evals}
{extra}"""


def write_generic(run_dir: Path, out_dir: Path, recipe: dict, title: str = "", extra: str = "") -> list[Path]:
    """Weights, config, recipe and a model card (``title``/``extra`` let project writers extend it)."""
    _, final = read_run(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "model.safetensors", out_dir / "model.safetensors")
    config = {"corefm_model": recipe["model"]["name"], **model_architecture(recipe["model"])}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "recipe.json").write_text(json.dumps(recipe, indent=2))
    title = title or f"{config['corefm_model']} ({run_dir.name})"
    (out_dir / "README.md").write_text(model_card(recipe, final, title, extra))
    return [out_dir / n for n in ("model.safetensors", "config.json", "recipe.json", "README.md")]


@contextlib.contextmanager
def ema_view(run_dir: Path) -> Iterator[Path]:
    """A folder that reads as ``run_dir`` with its weight EMA as ``model.safetensors`` and the EMA's
    held-out metrics as ``final.json``'s eval, so every project's release writer releases the EMA
    unchanged. Everything else is linked, not copied."""
    ema = run_dir / "model_ema.safetensors"
    if not ema.is_file():
        raise CheckpointError(f"{ema} is missing: the run had no ema.momentum (or export it with "
                              f"`corefm export {run_dir}`)")
    final = json.loads((run_dir / "final.json").read_text())
    evals = final.get("eval") or {}
    final["eval"] = {k[len("ema_"):]: v for k, v in evals.items() if k.startswith("ema_")}
    final["weights"] = "ema"
    with tempfile.TemporaryDirectory(prefix="corefm-ema-") as tmp:
        view = Path(tmp) / run_dir.name
        view.mkdir()
        for entry in run_dir.resolve().iterdir():
            if entry.name not in ("model.safetensors", "final.json", "model_ema.safetensors"):
                (view / entry.name).symlink_to(entry)
        (view / "model.safetensors").symlink_to(ema.resolve())
        (view / "final.json").write_text(json.dumps(final, indent=2))
        yield view


def _insert_section_end(card: str, heading: str, text: str) -> str:
    """``text`` at the end of the card's ``heading`` section (before the next ``## ``), else appended."""
    lines = card.splitlines()
    if heading in lines:
        start = lines.index(heading) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
        while end > start and not lines[end - 1].strip():
            end -= 1
        gap = [""] if end < len(lines) and lines[end].strip() else []
        return "\n".join(lines[:end] + ["", text] + gap + lines[end:]) + "\n"
    return card.rstrip("\n") + f"\n\n{text}\n"


def card_pictures(run_dir: Path, out_dir: Path) -> list[Path]:
    """``training_curve.png`` from ``run_dir/metrics.jsonl`` and the grids in ``run_dir/examples/`` (copied to
    ``out_dir/examples/``), each referenced from ``out_dir/README.md``. Returns the files added; a run
    without metrics or examples adds none (a curve that cannot be drawn is said in one line)."""
    readme = out_dir / "README.md"
    if not readme.is_file():
        return []
    card, added = readme.read_text(), []
    if (run_dir / "metrics.jsonl").is_file():
        from corefm.viz.curves import plot_runs

        try:
            added.append(plot_runs([run_dir], out_dir / "training_curve.png", title=f"{run_dir.name}: training"))
        except ConfigError as e:
            print(f"release: no training curve in the card ({e})", file=sys.stderr)
        else:
            card = _insert_section_end(card, "## Training", "![training curve](training_curve.png)")
    grids = sorted((run_dir / "examples").glob("*.png")) if (run_dir / "examples").is_dir() else []
    if grids:
        (out_dir / "examples").mkdir(parents=True, exist_ok=True)
        shown = ["## Examples", "Dense predictions on held-out images (written by the eval's `--save-examples`):", ""]
        for grid in grids:
            added.append(Path(shutil.copyfile(grid, out_dir / "examples" / grid.name)))
            shown.append(f"![{grid.stem}](examples/{grid.name})")
        card = card.rstrip("\n") + "\n\n" + "\n".join(shown) + "\n"
    readme.write_text(card)
    return added


def release(run_dir: Path, out_dir: Path, push: str = "", private: bool = False,
            weights: str = "raw") -> list[Path]:
    """Write the release folder; with ``push="org/name"`` upload it, else print a dry run.
    ``weights="ema"`` releases the run's weight EMA (``model_ema.safetensors``) instead."""
    recipe, _ = read_run(run_dir)
    writer = writer_for(recipe["model"]["name"])
    if weights == "ema":
        with ema_view(run_dir) as view:
            files = writer(view, out_dir, recipe)
    elif weights == "raw":
        files = writer(run_dir, out_dir, recipe)
    else:
        raise ConfigError(f"release: weights must be 'raw' or 'ema', got {weights!r}")
    files = [*files, *card_pictures(run_dir, out_dir)]
    if push:
        token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
        if not token:
            raise CorefmError("--push needs a token in HF_TOKEN (it is read from the environment, never printed)")
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        try:
            api.create_repo(push, exist_ok=True, private=private)
            api.upload_folder(repo_id=push, folder_path=str(out_dir), commit_message=f"corefm release of {run_dir.name}")
        except Exception as e:  # noqa: BLE001 - no network, a refused token, a bad name: all one line
            raise CorefmError(f"pushing {out_dir} to the Hub repository {push} failed "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); the folder is written") from None
        print(f"pushed {len(files)} files to https://huggingface.co/{push}")
    else:
        print(f"dry run (add --push org/name to upload): {out_dir} would upload")
        for f in sorted(out_dir.rglob("*")):
            if f.is_file():
                print(f"  {f.relative_to(out_dir)}  {f.stat().st_size:,} bytes")
    return files
