"""``corefm release`` for OpenELM runs: a folder that ``transformers`` loads like Apple's checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from corefm.hub.release import model_card, read_run, register_release

USAGE = """
## Usage
```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{repo}")  # LLaMA tokenizer when it was released alongside
ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=32)[0]))
```
The weights use Apple's OpenELM names and `config.json` fields, so tools written for
`apple/OpenELM-*` work unchanged; `modeling_openelm.py` here needs only torch and transformers.
"""


@register_release("openelm")
def write_openelm_release(run_dir: Path, out_dir: Path, recipe: dict) -> list[Path]:
    """HF folder (config.json with auto_map, model.safetensors, code, tokenizer if the task names one)."""
    import torch
    from safetensors.torch import load_file

    from corefm.train.config import from_dict
    from projects.openelm.config import OpenELMConfig
    from projects.openelm.convert import assign_weights, save_hf
    from projects.openelm.model import OpenELM

    _, final = read_run(run_dir)
    body = {k: v for k, v in recipe["model"].items() if k != "name"}
    cfg = from_dict(OpenELMConfig, body, "model")
    with torch.device("meta"):
        model = OpenELM(cfg)
    assign_weights(model, load_file(str(run_dir / "model.safetensors")), f"{run_dir}/model.safetensors")
    tokenizer = recipe.get("task", {}).get("tokenizer")
    tokenizer_dir = Path(tokenizer) if isinstance(tokenizer, str) and Path(tokenizer).is_dir() else None
    files = save_hf(model, cfg, out_dir, tokenizer_dir=tokenizer_dir)
    (out_dir / "recipe.json").write_text(json.dumps(recipe, indent=2))
    extra = USAGE.format(repo=out_dir.name)
    (out_dir / "README.md").write_text(model_card(recipe, final, f"OpenELM ({run_dir.name})", extra))
    return [*files, out_dir / "recipe.json", out_dir / "README.md"]
