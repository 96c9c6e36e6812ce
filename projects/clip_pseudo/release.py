"""``corefm release`` for CLIP runs: an open_clip folder (loads with no corefm code) + model card.

Files: ``open_clip_config.json`` and ``open_clip_model.safetensors`` (what
``open_clip.create_model_and_transforms("local-dir:DIR")`` / ``"hf-hub:org/name"`` read),
``heads.safetensors`` + ``heads.json`` when the run trained pseudo-label heads, ``recipe.json``
and ``README.md``. ``corefm release RUN --out DIR --push org/name`` uploads the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from corefm.hub.release import model_card, read_run, register_release

USAGE = """
## Usage with open_clip (no corefm needed)
```python
import open_clip, torch
model, _, preprocess = open_clip.create_model_and_transforms("hf-hub:{repo}")  # or "local-dir:{name}"
tokenizer = open_clip.get_tokenizer("hf-hub:{repo}")
image = preprocess(pil_image).unsqueeze(0)
text = tokenizer([{examples}])
with torch.no_grad():
    probs = (100 * model.encode_image(image, normalize=True) @ model.encode_text(text, normalize=True).T).softmax(-1)
```
Inputs: {size}x{size} RGB (grey images are converted), mean {mean}, std {std}, bicubic resize of the
shortest side and a centre crop: open_clip's `preprocess` above does exactly what training did.

## Pseudo-label heads
{heads}
"""


def _heads_text(recipe: dict) -> str:
    heads = recipe["task"].get("heads") or []
    if not heads:
        return "None: trained as plain CLIP (the ablation of the paper's multi-task training)."
    rows = "\n".join(f"| {h['name']} | {h['kind']} | `{h['key']}` | {h['channels']} | {h['weight']} | {h['loss']} |"
                     for h in heads)
    return ("Trained next to the contrastive loss on experts' pseudo-labels (CLIP meets Model Zoo Experts, "
            "arXiv 2310.14108); weights in `heads.safetensors`, specs in `heads.json`; load them with "
            "`projects.clip_pseudo.openclip_io.load_heads`.\n\n"
            "| head | kind | shard key | channels | weight | loss |\n|---|---|---|---|---|---|\n" + rows)


@register_release("clip")
def write_clip_release(run_dir: Path, out_dir: Path, recipe: dict) -> list[Path]:
    from safetensors.torch import load_file

    from corefm.train.config import parse_recipe
    from corefm.train.build import build_task
    from projects.clip_pseudo.config import require_vit_tower
    from projects.clip_pseudo.openclip_io import save_open_clip

    parsed = parse_recipe(json.loads(json.dumps(recipe)))
    # before anything is read or built: the release is an open_clip folder, which has no MobileViT tower
    require_vit_tower(parsed.model, "corefm release of a CLIP run (an open_clip folder)")
    _, final = read_run(run_dir)
    task = build_task(parsed)
    task.model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    files = save_open_clip(task.model, task.model.cfg, out_dir, mean=tuple(parsed.task.mean),
                           std=tuple(parsed.task.std))
    (out_dir / "recipe.json").write_text(json.dumps(recipe, indent=2))
    classes = task.class_names[:3] or ["a diagram", "a dog", "a cat"]
    extra = USAGE.format(repo=f"<org>/{out_dir.name}", name=out_dir, size=task.model.cfg.image_size,
                         mean=list(parsed.task.mean), std=list(parsed.task.std), heads=_heads_text(recipe),
                         examples=", ".join(f'"a photo of a {c}."' for c in classes))
    card = model_card(recipe, final, f"CLIP ({run_dir.name})", extra)
    # our own front matter: open_clip's Hub loader and the Hub's widgets key on these fields
    tags = ["corefm", "clip", "open_clip"] + (["pseudo-labels"] if recipe["task"].get("heads") else [])
    card = (f"---\nlibrary_name: open_clip\npipeline_tag: zero-shot-image-classification\n"
            f"tags: [{', '.join(tags)}]\n---\n" + card.split("---\n", 2)[2])
    (out_dir / "README.md").write_text(card)
    return [*files, out_dir / "recipe.json", out_dir / "README.md"]
