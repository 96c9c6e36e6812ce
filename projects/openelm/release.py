"""``corefm release`` for OpenELM runs: a folder that ``transformers`` loads like Apple's checkpoints.

The folder holds ``config.json`` (Apple's fields + ``auto_map``), ``model.safetensors`` (Apple's
names), the self-contained modeling code, the tokenizer the training shards were made with, the
resolved recipe and a model card (:mod:`projects.openelm.card`). The tokenizer is found through
the training shards' manifest, which ``corefm openelm tokenize`` writes with the tokenizer's path and
sha256 (or through a ``task.tokenizer`` folder in the recipe); a tokenizer whose checksum no longer
matches is left out rather than shipped wrong.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from corefm.hub.release import read_run, register_release

USAGE = """
## Usage
```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{repo}", trust_remote_code=True)
ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=32)[0]))
```
`trust_remote_code=True` on both: `config.json` names this folder's OpenELM classes, which
transformers reads before the tokenizer too; without it a terminal asks whether to run that code
(the tokenizer itself is transformers' own `PreTrainedTokenizerFast`). The weights use Apple's
OpenELM names and `config.json` fields, so code that reads `apple/OpenELM-*` checkpoints reads
these; `modeling_openelm.py` here is corefm's own and needs only torch and transformers 5. Apple's
published `modeling_openelm.py` predates transformers 5 (its key-value cache API and buffers made
on the meta device) and does not run there unedited.
Evaluate with lm-eval as OpenELM was, with a BOS token before every context: `corefm openelm
lm-eval {repo} --tasks ...`, or lm-eval's own Hugging Face model with the same numbers:
```
lm_eval --model hf --model_args pretrained={repo},trust_remote_code=True,add_bos_token=True --tasks ...
```
"""


def find_tokenizer(recipe: dict) -> tuple[Path | None, str]:
    """(tokenizer folder, note for the card): the recipe's task.tokenizer, else the data manifest's."""
    from projects.openelm.card import data_producer

    named = recipe.get("task", {}).get("tokenizer")
    if isinstance(named, str) and Path(named).is_dir():
        return Path(named), f"(from `{named}`)"
    folder, producer = data_producer(recipe)
    tok = producer.get("tokenizer", {})
    if folder is None or not tok.get("path"):
        return None, "(no tokenizer recorded: none released)"
    path = (folder / tok["path"]).resolve()
    canonical = path / tok.get("file", "tokenizer.json")
    if not canonical.is_file():
        return None, f"(recorded at {path}, which is missing: none released)"
    if hashlib.sha256(canonical.read_bytes()).hexdigest() != tok.get("sha256"):
        return None, f"({canonical} changed since the shards were made: none released)"
    return path, "(released in this folder)"


@register_release("openelm")
def write_openelm_release(run_dir: Path, out_dir: Path, recipe: dict) -> list[Path]:
    """HF folder (config.json with auto_map, model.safetensors, code, tokenizer, recipe, model card)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from corefm.train.config import from_dict, model_architecture
    from projects.openelm.average import AVERAGE_KEY
    from projects.openelm.card import model_card
    from projects.openelm.config import OpenELMConfig
    from projects.openelm.convert import assign_weights, save_hf
    from projects.openelm.model import OpenELM

    _, final = read_run(run_dir)
    cfg = from_dict(OpenELMConfig, model_architecture(recipe["model"]), "model")
    weights = run_dir / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        averaged = (f.metadata() or {}).get(AVERAGE_KEY, "")
    with torch.device("meta"):
        model = OpenELM(cfg)
    assign_weights(model, load_file(str(weights)), str(weights))
    tokenizer_dir, note = find_tokenizer(recipe)
    files = save_hf(model, cfg, out_dir, tokenizer_dir=tokenizer_dir)
    (out_dir / "recipe.json").write_text(json.dumps(recipe, indent=2))
    params = sum(p.numel() for p in model.parameters())
    steps = [int(s) for s in averaged.split(",") if s]
    card = model_card(run_dir, recipe, final, cfg, params, steps, note, USAGE.format(repo=out_dir.name))
    (out_dir / "README.md").write_text(card)
    return [*files, out_dir / "recipe.json", out_dir / "README.md"]
