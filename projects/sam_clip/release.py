"""``corefm release`` for SAM-CLIP runs: weights, config, the teachers it needs, and a model card.

Files: ``model.safetensors`` (SAM names + ``clip_head.*``), ``config.json``, ``recipe.json``,
``sam.pth`` + ``sam_config.json`` (the SAM part alone, segment_anything layout), ``clip_teacher/``
(the open_clip CLIP teacher: its text tower embeds class names for zero-shot use),
``sam_clip_eval.json`` when the run folder has one, and ``README.md``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from corefm.hub.release import register_release, write_generic

USAGE = """
## Architecture
One SAM ViT image encoder (segment_anything's `ImageEncoderViT`, state-dict names `image_encoder.*`)
shared by two heads: the SAM head (SAM's `mask_decoder.*` with its frozen `prompt_encoder.*`) and the
CLIP head (`clip_head.*`: {layers} transformer blocks initialised from the encoder's last block,
max-pool over tokens, LayerNorm, 2-hidden-layer MLP into the {embed}-d CLIP text space of
`{teacher}`). Trained by multi-task distillation with rehearsal (SAM-CLIP, arXiv 2310.15308).

## Usage
```python
from projects.sam_clip.evaluate import load_student
recipe, model = load_student(Path("{name}"))        # this folder
tokens = model.encode(images)                        # (B, 3, {size}, {size}), SAM's mean/std on 0-255 pixels
clip = model.clip_embed(tokens)                      # (B, {embed}) image embedding in the CLIP text space
dense = model.clip_embed(tokens, dense=True)         # (B, h, w, {embed}) per-patch, zero-shot segmentation
low_res, iou = model.decode(model.image_embeddings(tokens)[:1], points, labels, boxes)  # SAM prompts
```
`sam.pth` loads in segment_anything (`Sam.load_state_dict`) with the sizes in `sam_config.json`.
Class-name embeddings come from `clip_teacher/` (open_clip: `create_model_and_transforms("local-dir:clip_teacher")`).
Evaluate: `corefm sam-clip eval {name} --data VAL_SHARDS --teachers`.

## Held-out metrics (`corefm sam-clip eval`)
{metrics}
"""


@register_release("sam_clip")
def write_sam_clip_release(run_dir: Path, out_dir: Path, recipe: dict) -> list[Path]:
    from projects.sam_clip.evaluate import load_student
    from projects.sam_clip.teachers import save_sam_checkpoint

    _, model = load_student(run_dir)
    task = recipe["task"]
    out_dir.mkdir(parents=True, exist_ok=True)
    extra_files = [save_sam_checkpoint(model.sam_state_dict(), model.cfg, out_dir / "sam.pth"),
                   out_dir / "sam_config.json"]
    teacher = task.get("clip_teacher") or ""
    if teacher and Path(teacher).is_dir():
        shutil.copytree(teacher, out_dir / "clip_teacher", dirs_exist_ok=True)
        extra_files.append(out_dir / "clip_teacher")
    metrics = "(run `corefm sam-clip eval RUN --data VAL --json RUN/sam_clip_eval.json` before releasing)"
    if (run_dir / "sam_clip_eval.json").is_file():
        shutil.copyfile(run_dir / "sam_clip_eval.json", out_dir / "sam_clip_eval.json")
        extra_files.append(out_dir / "sam_clip_eval.json")
        rows = json.loads((run_dir / "sam_clip_eval.json").read_text())
        metrics = "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    extra = USAGE.format(layers=model.cfg.clip_head_layers, embed=model.cfg.clip_embed_dim, teacher=teacher or "?",
                         name=out_dir.name, size=model.cfg.img_size, metrics=metrics)
    # the recipe's model section may name a preset over dataclass defaults: write the resolved sizes
    resolved = {**recipe, "model": {"name": "sam_clip", **asdict(model.cfg), "sam_checkpoint": "",
                                    "init_checkpoint": ""}}
    files = write_generic(run_dir, out_dir, resolved, title=f"SAM-CLIP ({run_dir.name})", extra=extra)
    return files + extra_files
