"""``corefm release`` for ByteFormer runs: weights, config, class names and a model card.

The folder holds ``model.safetensors``, ``config.json`` (the model section, ``corefm_model:
byteformer``), ``recipe.json`` (model + task: the encoding the model expects), ``classes.json``
and ``README.md``; ``corefm predict RELEASE FILE...`` loads it back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from corefm.hub.release import model_card, read_run, register_release
from projects.byteformer.predict import class_names

USAGE = """
## Inputs
The model reads file bytes: {inputs}, at most {max_bytes:,} bytes, padded and masked per batch.
Byte transforms applied after encoding: {transforms}.
Classes: {classes}.

## Usage
```
corefm predict {name} picture.png recording.wav --top 3
```
or from Python:
```python
from pathlib import Path
from projects.byteformer.predict import Predictor
print(Predictor(Path("{name}")).predict([Path("picture.png")], top=3))
```
"""


def _inputs(task: dict) -> str:
    image = task["image_encoding"] + (f" (quality {task['jpeg_quality']})" if task["image_encoding"] == "jpeg" else "")
    audio = task["audio_encoding"] + (f" ({task['wav_dtype']})" if task["audio_encoding"] == "wav" else "")
    size = f"resized to {task['image_size']}x{task['image_size']}, " if task.get("image_size") else ""
    colour = "grey" if task.get("channels") == 1 else "RGB"
    return (f"images ({colour}, {size}encoded as {image}) and audio (mono {task['sample_rate']} Hz, "
            f"{task['audio_seconds']} s clips, encoded as {audio}); `raw` means the file exactly as stored")


@register_release("byteformer")
def write_byteformer_release(run_dir: Path, out_dir: Path, recipe: dict) -> list[Path]:
    _, final = read_run(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "model.safetensors", out_dir / "model.safetensors")
    model = dict(recipe["model"])
    config = {"corefm_model": model.pop("name"), **model}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "recipe.json").write_text(json.dumps(recipe, indent=2))
    classes = class_names(recipe)
    (out_dir / "classes.json").write_text(json.dumps(classes, indent=2))
    task = recipe["task"]
    max_bytes = task.get("max_bytes") or model["max_bytes"]
    extra = USAGE.format(inputs=_inputs(task), max_bytes=max_bytes, name=out_dir.name,
                         transforms=json.dumps(task.get("byte_transforms") or "none"), classes=", ".join(classes))
    (out_dir / "README.md").write_text(model_card(recipe, final, f"ByteFormer ({run_dir.name})", extra))
    return [out_dir / n for n in ("model.safetensors", "config.json", "recipe.json", "classes.json", "README.md")]
