"""``corefm clip eval --save-examples N``: one picture per dense head of the first N held-out images.

Each row is one image: the image, the expert's pseudo-label from the shard, the model's prediction.
Heads are the model's own (trained with ``task.heads``, or loaded from a release's heads.safetensors)
and, with ``--probe``, the linear probes the eval just fitted on frozen tokens. Class maps use
:func:`corefm.viz.grid.colorize` with a legend, 0/1 maps grey (the prediction's sigmoid), depth a
colour map over the label's range, normals as RGB.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from corefm.data import DataConfig, build_eval_loader
from corefm.errors import ConfigError
from corefm.viz.grid import Panel, colorize, denormalize, grey, heat, palette, save_grid
from projects.clip_pseudo.heads import HeadSpec
from projects.clip_pseudo.task import SampleTransform


def class_names_of(spec: HeadSpec, classes: list[str]) -> list[str]:
    """Legend names of a segmentation head's channels."""
    if spec.name == "semantic" and len(classes) + 1 == spec.channels:
        return ["background", *classes]
    if spec.channels == 2:
        return ["background", "foreground"]
    return [f"class {i}" for i in range(spec.channels)]


def first_samples(loaded, data: str, specs: list[HeadSpec], n: int) -> dict:
    """The first ``n`` samples of ``data`` through the eval transform, with every spec's label and mask."""
    model = loaded.model
    cfg = replace(loaded.task_cfg, heads=list(specs), hflip=False, random_resized_crop=[])
    sizes = {s.name: s.label_size or model.cfg.image_size for s in specs}
    fn = SampleTransform(cfg, model.cfg.image_size, model.cfg.context_length, sizes, train=False)
    loader = build_eval_loader(data, DataConfig(num_workers=0), rank=0, world_size=1, batch_size=n, map_fn=fn)
    parts: dict[str, list[torch.Tensor]] = {}
    got = 0
    for batch in loader:
        for k, v in batch.items():
            if torch.is_tensor(v):
                parts.setdefault(k, []).append(v)
        got += len(batch["image"])
        if got >= n:
            break
    if not got:
        raise ConfigError(f"--save-examples: no usable samples in {data}")
    return {k: torch.cat(v)[:n] for k, v in parts.items()}


def _views(spec: HeadSpec, label: torch.Tensor, pred: torch.Tensor, has_label: bool) -> tuple[Panel, Panel]:
    """(pseudo-label panel, prediction panel) of one sample; pred is the head's raw output (C, S, S)."""
    missing = Panel(None, note="no pseudo-label\nin this sample")
    if spec.kind == "segmentation":
        shown = colorize(pred.argmax(0), spec.channels)
        return (Panel(colorize(label, spec.channels, ignore=spec.ignore_index)) if has_label else missing,
                Panel(shown))
    if spec.kind == "binary":
        return (Panel(grey(label[0])) if has_label else missing, Panel(grey(torch.sigmoid(pred[0]))))
    if spec.channels == 3:  # unit normals stored as (n + 1) / 2
        unit = torch.nn.functional.normalize(pred.float(), dim=0)
        as_rgb = lambda t: ((t.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()  # noqa: E731
        return (Panel(as_rgb(label)) if has_label else missing, Panel(as_rgb(unit)))
    value = label[0]
    valid = value[value != 0] if spec.ignore_zero else value.flatten()
    lo, hi = (float(valid.min()), float(valid.max())) if has_label and valid.numel() else (None, None)
    return (Panel(heat(value, lo, hi)) if has_label else missing,
            Panel(heat(pred[0], lo, hi), note="" if lo is None else f"scale {lo:.2f}..{hi:.2f}"))


@torch.no_grad()
def save_examples(loaded, data: str, n: int, out_dir: Path, probes: dict[str, torch.nn.Module] | None = None,
                  probe_specs: list[HeadSpec] | None = None, classes: list[str] | None = None,
                  title: str = "") -> list[Path]:
    """Write ``out_dir/head_<name>.png`` per model head and ``out_dir/probe_<name>.png`` per fitted
    probe, each with the first ``n`` images of ``data``. Returns the files."""
    from projects.clip_pseudo.probe import semantic_target

    model = loaded.model
    heads = list(getattr(model, "head_specs", []))
    probe_specs = [s for s in (probe_specs or []) if s.name in (probes or {})]
    if not heads and not probe_specs:
        raise ConfigError("--save-examples: the model has no dense heads (task.heads) and no --probe was fitted: "
                          "there is no dense prediction to draw")
    # labels of the model's heads and of the probes share one pass (names may repeat: probes are renamed)
    renamed = {f"probe_{s.name}": replace(s, name=f"probe_{s.name}") for s in probe_specs}
    batch = first_samples(loaded, data, heads + list(renamed.values()), n)
    vision = model.visual(batch["image"])
    p = model.cfg.patch_size
    grid = (batch["image"].shape[-2] // p, batch["image"].shape[-1] // p)
    images = [denormalize(im, loaded.task_cfg.mean, loaded.task_cfg.std) for im in batch["image"]]
    jobs = [(f"head_{s.name}", s, s.name, model.heads[s.name]) for s in heads]
    jobs += [(name, spec, spec.name, probes[orig.name]) for (name, spec), orig in zip(renamed.items(), probe_specs)]
    written = []
    for file_stem, spec, key, head in jobs:
        size = spec.label_size or model.cfg.image_size
        pred = head(vision.patch_tokens, grid, size).float()
        labels, mask = batch[f"label_{key}"], batch[f"mask_{key}"]
        if spec.name.removeprefix("probe_") == "semantic":
            labels = semantic_target(labels, batch["label"].clamp(min=0), spec.ignore_index)
            mask = mask * (batch["label"] >= 0).float()
        rows = []
        for i in range(len(images)):
            label_view, pred_view = _views(spec, labels[i], pred[i], bool(mask[i] > 0))
            rows.append([Panel(images[i]), label_view, pred_view])
        legend = []
        if spec.kind == "segmentation":
            legend = list(zip(class_names_of(replace(spec, name=spec.name.removeprefix("probe_")), classes or []),
                              palette(spec.channels)))
        what = "linear probe" if file_stem.startswith("probe_") else "head"
        written.append(save_grid(
            rows, Path(out_dir) / f"{file_stem}.png",
            columns=["image", f"pseudo-label ({spec.key})", f"{what} prediction"],
            legend=legend, title=f"{title + ': ' if title else ''}{what} {spec.name.removeprefix('probe_')} "
                                 f"({spec.kind})"))
    return written
