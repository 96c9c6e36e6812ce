"""``corefm sam-clip eval``: the merged model (and optionally its teachers) on held-out shards.

Metrics: ``zero_shot_top1`` (CLIP head vs the CLIP teacher's class text embeddings),
``clip_cosine`` (to the teacher's image embedding), ``miou_gt_{point,box}`` and
``miou_target_{point,box}`` (promptable segmentation against ground truth and the SAM teacher's
masks), ``semseg_miou`` (zero-shot semantic segmentation: each patch's CLIP-head feature against
the class embeddings plus a "background" embedding; ground truth = the mask x the image's class)
and ``semseg_miou_fg`` (the same over ground-truth foreground pixels and the classes only).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from corefm.data import DataConfig, build_eval_loader
from corefm.data.errors import DataError
from corefm.errors import ConfigError
from projects.sam_clip.losses import prompt_iou_sums, zero_shot_counts
from projects.sam_clip.task import SamClipTask, SamClipTaskConfig, gt_per_prompt

# The weights come from model.safetensors; teachers and init files need not exist where the model is loaded.
NO_TEACHERS = ["model.sam_checkpoint=", "model.init_checkpoint=", "task.stage=distill", "task.clip_source=none",
               "task.sam_source=none", "task.clip_teacher=", "task.sam_teacher=", "task.class_names=[]"]


def load_student(path: Path) -> tuple[Any, torch.nn.Module]:
    """A sam_clip run or release folder -> (recipe, model in eval mode); teachers are not loaded."""
    from corefm.train.evaluate import load_run

    recipe, task = load_run(path, NO_TEACHERS)
    if recipe.model_name != "sam_clip":
        raise ConfigError(f"{path} is a {recipe.model_name} run, not a sam_clip run")
    return recipe, task.model.eval()


def recipe_task(path: Path) -> dict:
    """The run's task section as written (load_student overrides the teacher fields)."""
    import json

    return json.loads((path / "recipe.json").read_text())["task"]


def teacher_spec(path: Path, given: str, recipe_value: str, bundled: str) -> str:
    """The teacher to use for a run or release folder ``path``: ``given`` if set, else the copy a release
    bundles at ``bundled``, else the recipe's own if it exists here ("" when none is found)."""
    if given:
        return given
    if (path / bundled).exists():  # release folders carry their teachers
        return str(path / bundled)
    return recipe_value if recipe_value and Path(recipe_value.split("@")[-1]).exists() else ""


def semseg_prediction(dense: torch.Tensor, text: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """dense (B, h, w, E) patch features, text (E, N) class embeddings -> (B, *size) the nearest class
    of each pixel (cosine logits upsampled bilinearly)."""
    logits = torch.einsum("bhwe,ec->bchw", F.normalize(dense.float(), dim=-1), text)
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False).argmax(1)


def semseg_confusion(dense: torch.Tensor, text: torch.Tensor, label: torch.Tensor, mask: torch.Tensor,
                     foreground_only: bool = False) -> torch.Tensor:
    """dense (B, h, w, E) patch features, text (E, 1 + C) (background first), label (B,), mask (B, H, W)
    -> (1 + C, 1 + C) confusion counts [ground truth, prediction] at mask resolution.
    ``foreground_only``: only ground-truth foreground pixels, classes only (no background) -> (C, C)."""
    if foreground_only:
        text = text[:, 1:]
    pred = semseg_prediction(dense, text, mask.shape[-2:])
    fg = mask > 0.5
    n = text.shape[1]
    if foreground_only:
        gt = label[:, None, None].expand_as(pred)
        return torch.bincount((gt * n + pred)[fg], minlength=n * n).reshape(n, n)
    gt = fg.long() * (label[:, None, None] + 1)
    return torch.bincount((gt * n + pred).flatten(), minlength=n * n).reshape(n, n)


def miou(confusion: torch.Tensor) -> float:
    inter = confusion.diag().float()
    union = confusion.sum(0).float() + confusion.sum(1).float() - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else 0.0


@torch.no_grad()
def run_eval(path: Path, data: str, clip_teacher: str = "", sam_teacher: str = "", classes: list[str] | None = None,
             templates: str = "simple", teachers: bool = False, max_samples: int = 0, batch_size: int = 64,
             workers: int = 1, save_examples: int = 0, examples_dir: Path | None = None) -> dict[str, float]:
    """The metrics of the module docstring; ``save_examples`` > 0 also draws that many held-out examples
    (:mod:`projects.sam_clip.examples`) into ``examples_dir`` (default ``path/examples``)."""
    from corefm.data import load_manifest

    recipe, model = load_student(path)
    written = recipe_task(path)
    clip_spec = teacher_spec(path, clip_teacher, written.get("clip_teacher", ""), "clip_teacher")
    sam_spec = teacher_spec(path, sam_teacher, written.get("sam_teacher", ""), "sam_teacher/sam.pth")
    if not classes:
        classes = list(written.get("class_names") or [])
    if not classes:
        try:
            classes = list(load_manifest(data.split("#")[0]).producer.get("classes", []))
        except DataError:  # data given as a shard pattern has no manifest: zero-shot is skipped
            classes = []
    if clip_spec and not classes:
        print("sam-clip eval: no class names (recipe, --classes or the data's manifest): "
              "zero-shot classification and semantic segmentation are skipped", file=sys.stderr)
    cfg = SamClipTaskConfig(stage="distill", clip_source="online" if clip_spec else "none",
                            sam_source="online" if sam_spec else "gt", clip_teacher=clip_spec, sam_teacher=sam_spec,
                            class_names=classes if clip_spec else [], templates=templates,
                            clip_image_size=recipe.task.clip_image_size, mask_key=recipe.task.mask_key,
                            prompts=1)
    task = SamClipTask(cfg, model).eval()
    text = None
    if task.classifier is not None:
        background = task.clip_teacher.classifier(["background"], templates)
        text = torch.cat([background, task.classifier], dim=1)
        confusion = torch.zeros(len(classes) + 1, len(classes) + 1, dtype=torch.long)
        confusion_fg = torch.zeros(len(classes), len(classes), dtype=torch.long)
    loader = build_eval_loader(data, DataConfig(num_workers=workers), rank=0, world_size=1, batch_size=batch_size,
                               map_fn=task.sample_transform(False), collate_fn=task.collate)
    sums: dict[str, float] = {}

    def add(key: str, value: Any) -> None:
        sums[key] = sums.get(key, 0.0) + float(value)

    seen = 0
    bar = tqdm(total=max_samples or loader.num_samples, unit="img", desc="sam-clip eval", leave=False)
    for batch in loader:
        # The backbone runs once on the CLIP rows: their tokens serve the metrics and the dense features.
        tokens = model.encode(batch["clip_image"]) if task.uses_clip and len(batch["clip_image"]) else None
        for k, v in task.eval_sums(batch, clip_tokens=tokens).items():
            add(k, v)
        if text is not None and tokens is not None:
            dense = model.clip_embed(tokens, dense=True)
            keep = (batch["clip_has_mask"] > 0) & (batch["clip_label"] >= 0)
            if keep.any():
                args = (dense[keep], text, batch["clip_label"][keep], batch["clip_mask"][keep])
                confusion += semseg_confusion(*args)
                confusion_fg += semseg_confusion(*args, foreground_only=True)
        if teachers:
            _teacher_sums(task, batch, add)
        n = max(len(batch["clip_image"]), len(batch["sam_image"]))
        seen += n
        bar.update(n)
        if max_samples and seen >= max_samples:
            break
    bar.close()
    if not sums:
        raise ConfigError(f"no usable samples in {data}")
    out = {"samples": seen, **task.eval_metrics(sums)}
    if text is not None:
        out["semseg_miou"] = miou(confusion)
        out["semseg_miou_fg"] = miou(confusion_fg)
    if save_examples:
        from projects.sam_clip.examples import save_examples as draw

        for file in draw(task, data, save_examples, examples_dir or path / "examples", text, classes,
                         title=path.name):
            print(f"wrote {file}", file=sys.stderr)
    if teachers:
        if sums.get("t_zs_count"):
            out["teacher_clip_zero_shot_top1"] = sums["t_zs_correct"] / sums["t_zs_count"]
        for name in ("point", "box"):
            if sums.get(f"t_iou_{name}_count"):
                out[f"teacher_sam_miou_gt_{name}"] = sums[f"t_iou_{name}_sum"] / sums[f"t_iou_{name}_count"]
    return out


def _teacher_sums(task: SamClipTask, batch: dict, add) -> None:
    """The teachers' own zero-shot top-1 and mIoU vs ground truth on the same samples and prompts."""
    if task.clip_teacher is not None and task.classifier is not None and len(batch["clip_image"]):
        emb = task.clip_teacher.encode_image(batch["clip_teacher_image"].float())
        correct, count = zero_shot_counts(emb, task.classifier, batch["clip_label"])
        add("t_zs_correct", correct)
        add("t_zs_count", count)
    if task.sam_teacher is not None and len(batch["sam_image"]):
        logits = task.sam_teacher.predict(batch["sam_image"].float(), batch["sam_points"].float(),
                                          batch["sam_point_labels"], batch["sam_boxes"].float())
        k = task.cfg.prompts
        for name, (total, count) in prompt_iou_sums(logits, gt_per_prompt(batch, k), k,
                                                    rows=batch["sam_has_gt"] > 0).items():
            add(f"t_iou_{name}_sum", total)
            add(f"t_iou_{name}_count", count)
