"""``corefm release`` for ByteFormer runs: weights, config, class names and a model card.

The folder holds ``model.safetensors``, ``config.json`` (the model section, ``corefm_model:
byteformer``), ``recipe.json`` (model + task: the encoding the model expects), ``classes.json``
and ``README.md``; ``corefm byteformer predict RELEASE FILE...`` loads it back.
"""

from __future__ import annotations

import json
from pathlib import Path

from corefm.hub.release import register_release, write_generic
from projects.byteformer.predict import class_names

USAGE = """
## Inputs
The model reads file bytes: {inputs}, at most {max_bytes:,} bytes, padded and masked per batch.
Byte transforms applied after encoding: {transforms}.
Classes: {classes}.

## Usage
```
corefm byteformer predict {name} picture.png recording.wav --top 3
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
    classes = class_names(recipe)
    task, model = recipe["task"], recipe["model"]
    max_bytes = task.get("max_bytes") or model["max_bytes"]
    extra = USAGE.format(inputs=_inputs(task), max_bytes=max_bytes, name=out_dir.name,
                         transforms=json.dumps(task.get("byte_transforms") or "none"), classes=", ".join(classes))
    files = write_generic(run_dir, out_dir, recipe, f"ByteFormer ({run_dir.name})", extra)
    (out_dir / "classes.json").write_text(json.dumps(classes, indent=2))
    return files + [out_dir / "classes.json"]
