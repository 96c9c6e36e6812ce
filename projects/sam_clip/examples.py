"""``corefm sam-clip eval --save-examples N``: what the merged model does on N held-out images.

``sam_clip_prompts.png``: per SAM sample, the point prompt drawn on the image, the teacher's mask and
the student's mask for it, then the same for the box prompt (the student's IoU with the teacher's mask
under each student mask). The "teacher" is the SAM teacher when the eval has one, else the
ground-truth mask the prompts were drawn from. ``sam_clip_semseg.png``: per CLIP sample with a mask, the
image, the ground truth (mask x the image's class) and the zero-shot semantic segmentation (each pixel's
nearest class embedding, "background" included), with a class legend.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from corefm.data import DataConfig, build_eval_loader
from corefm.errors import ConfigError
from corefm.viz.grid import Panel, colorize, denormalize, overlay, palette, save_grid
from projects.sam_clip.evaluate import semseg_prediction

TEACHER_COLOUR = (1.0, 0.55, 0.0)
STUDENT_COLOUR = (0.1, 0.55, 1.0)


def _first_rows(task, data: str, n: int, want_clip: bool) -> tuple[dict, dict]:
    """The first ``n`` SAM rows and (if ``want_clip``) ``n`` CLIP rows with a mask and a class of ``data``."""
    loader = build_eval_loader(data, DataConfig(num_workers=0), rank=0, world_size=1, batch_size=max(n, 8),
                               map_fn=task.sample_transform(False), collate_fn=task.collate)
    sam: dict[str, list] = {}
    clip: dict[str, list] = {}
    got = {"sam": 0, "clip": 0}
    for batch in loader:
        if task.uses_sam and got["sam"] < n and len(batch["sam_image"]):
            for k, v in batch.items():
                if k.startswith("sam_"):
                    sam.setdefault(k, []).append(v)
            got["sam"] += len(batch["sam_image"])
        if want_clip and got["clip"] < n and len(batch["clip_image"]):
            keep = (batch["clip_has_mask"] > 0) & (batch["clip_label"] >= 0)
            for k, v in batch.items():
                if k.startswith("clip_") and k != "clip_teacher_image":
                    clip.setdefault(k, []).append(v[keep])
            got["clip"] += int(keep.sum())
        if (got["sam"] >= n or not task.uses_sam) and (got["clip"] >= n or not want_clip):
            break
    return ({k: torch.cat(v)[:n] for k, v in sam.items()}, {k: torch.cat(v)[:n] for k, v in clip.items()})


def _point(xy):
    x, y = float(xy[0]) - 0.5, float(xy[1]) - 0.5  # prompt coordinates are pixel centres + 0.5

    def draw(ax) -> None:
        ax.plot([x], [y], marker="*", markersize=13, color="yellow", markeredgecolor="black", markeredgewidth=0.8)
    return draw


def _box(box):
    x0, y0, x1, y1 = (float(v) for v in box)

    def draw(ax) -> None:
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=1.6))
    return draw


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def prompt_grid(task, rows: dict, out: Path, title: str) -> Path:
    model, k = task.model, task.cfg.prompts
    logits, target = task.sam_outputs(rows)
    student, teacher = logits.float() > 0, target > 0.5
    mean, std = model.cfg.pixel_mean, model.cfg.pixel_std
    who = "SAM teacher" if task.cfg.sam_source == "online" else "ground truth"
    table = []
    for i in range(len(rows["sam_image"])):
        image = denormalize(rows["sam_image"][i], mean, std, scale=255.0)
        cells = []
        for j, mark in ((0, _point(rows["sam_points"][i, 0, 0])), (k, _box(rows["sam_boxes"][i, 0]))):
            cells += [Panel(image, draw=mark),
                      Panel(overlay(image, teacher[i, j], TEACHER_COLOUR), draw=mark),
                      Panel(overlay(image, student[i, j], STUDENT_COLOUR), draw=mark,
                            note=f"IoU {_iou(student[i, j], teacher[i, j]):.2f}")]
        table.append(cells)
    columns = ["point prompt", f"{who} mask", "student mask", "box prompt", f"{who} mask", "student mask"]
    return save_grid(table, out, columns=columns, title=f"{title + ': ' if title else ''}promptable segmentation")


def semseg_grid(task, rows: dict, text: torch.Tensor, classes: list[str], out: Path, title: str) -> Path:
    model = task.model
    dense = model.clip_embed(model.encode(rows["clip_image"]), dense=True)
    mask = rows["clip_mask"]
    pred = semseg_prediction(dense, text.to(dense.dtype), mask.shape[-2:])
    truth = (mask > 0.5).long() * (rows["clip_label"][:, None, None] + 1)
    n = len(classes) + 1
    mean, std = model.cfg.pixel_mean, model.cfg.pixel_std
    table = []
    for i in range(len(mask)):
        label = int(rows["clip_label"][i])
        hit = float((pred[i] == truth[i]).float().mean())
        table.append([Panel(denormalize(rows["clip_image"][i], mean, std, scale=255.0),
                            note=classes[label] if label < len(classes) else str(label)),
                      Panel(colorize(truth[i], n)), Panel(colorize(pred[i], n), note=f"pixel accuracy {hit:.2f}")])
    legend = list(zip(["background", *classes], palette(n)))
    return save_grid(table, out, columns=["image", "ground truth", "zero-shot segmentation"], legend=legend,
                     title=f"{title + ': ' if title else ''}zero-shot semantic segmentation")


@torch.no_grad()
def save_examples(task, data: str, n: int, out_dir: Path, text: torch.Tensor | None, classes: list[str],
                  title: str = "") -> list[Path]:
    """Write the pictures of the module docstring for the first ``n`` examples; returns the files.
    ``text``: (E, 1 + C) background + class embeddings (None: no CLIP teacher or no class names)."""
    want_clip = text is not None and task.uses_clip
    sam, clip = _first_rows(task, data, n, want_clip)
    out_dir = Path(out_dir)
    written = []
    if sam:
        written.append(prompt_grid(task, sam, out_dir / "sam_clip_prompts.png", title))
    if want_clip and clip and len(clip["clip_image"]):
        written.append(semseg_grid(task, clip, text, classes, out_dir / "sam_clip_semseg.png", title))
    elif text is None:
        print("sam-clip eval: no zero-shot segmentation picture without a CLIP teacher and class names",
              file=sys.stderr)
    if not written:
        raise ConfigError(f"--save-examples: no sample of {data} has a mask to prompt SAM with or to segment")
    return written
