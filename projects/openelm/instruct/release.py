"""``corefm release`` for ``openelm_finetune`` runs, and loading what it writes.

A LoRA run releases two things from one command::

    OUT/            the merged model: W + (alpha / r) B A folded into every targeted weight; a normal
                    OpenELM release folder (config.json, model.safetensors, modeling code) that plain
                    transformers loads with trust_remote_code=True, with the chat tokenizer
    OUT/adapter/    the peft adapter alone (adapter_config.json + adapter_model.safetensors, and the
                    chat tokenizer): PeftModel.from_pretrained(base, "OUT/adapter") on the base model

A full fine-tuning run releases the merged layout only. The adapter's tensor names are peft's for
the Hugging Face OpenELM (``base_model.model.transformer.layers.{i}.attn.qkv_proj.lora_A.weight``):
corefm's module names are Apple's without ``transformer.``, so the conversion is a prefix.

The merge starts from the base model as ``model.base`` names it today (fp32), after checking that
it is still the model the run trained on: the run's exported frozen weights must equal it (at the
training precision). The tokenizer is the one ``instruct-pack`` wrote beside the training shards
(with the chat template), checked against the sha256s in the shards' manifest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from corefm.errors import CheckpointError
from corefm.hub.release import read_run, register_release
from projects.openelm.instruct.chat import TOKENIZER_FILES, check_tokenizer
from projects.openelm.instruct.model import ADAPTER_NAME, LORA_TARGETS, FinetuneConfig

PEFT_PREFIX = "base_model.model."
ADAPTER_DIR = "adapter"
LORA_KINDS = ("lora_A", "lora_B")


# --- names ------------------------------------------------------------------------------------
def adapter_key(run_key: str) -> str:
    """``lm.layers.0.attn.qkv_proj.lora_A.default.weight`` (the run's) -> peft's name on the HF model."""
    key = run_key.removeprefix("lm.")
    module, kind, adapter, leaf = key.rsplit(".", 3)
    if kind not in LORA_KINDS or adapter != ADAPTER_NAME or leaf != "weight":
        raise CheckpointError(f"{run_key} is not a LoRA weight")
    return f"{PEFT_PREFIX}transformer.{module}.{kind}.{leaf}"


def base_key(adapter_name: str) -> tuple[str, str]:
    """peft's adapter name -> (corefm name of the weight it modifies, lora_A|lora_B)."""
    key = adapter_name.removeprefix(PEFT_PREFIX).removeprefix("transformer.")
    module, kind, leaf = key.rsplit(".", 2)
    if kind not in LORA_KINDS or leaf != "weight":
        raise CheckpointError(f"adapter tensor {adapter_name} is not a LoRA weight")
    return f"{module}.weight", kind


def split_run_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A run's exported state -> (frozen base weights with corefm names, adapter with peft names)."""
    base, adapter = {}, {}
    for k, v in state.items():
        if ".lora_" in k:
            adapter[adapter_key(k)] = v
        else:
            base[k.removeprefix("lm.").replace(".base_layer.", ".")] = v
    return base, adapter


# --- merging ----------------------------------------------------------------------------------
def merge_adapter(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], scaling: float
                  ) -> dict[str, torch.Tensor]:
    """W + scaling * B @ A for every adapted weight (computed in float64, stored in W's dtype)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in adapter.items():
        weight, kind = base_key(name)
        pairs.setdefault(weight, {})[kind] = tensor
    merged = dict(base)
    for weight, ab in pairs.items():
        if weight not in base or set(ab) != set(LORA_KINDS):
            raise CheckpointError(f"the adapter does not fit the base model at {weight}")
        a, b = ab["lora_A"].double(), ab["lora_B"].double()
        w = base[weight]
        if (b.shape[0], a.shape[1]) != tuple(w.shape) or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"adapter shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit {weight} "
                                  f"{tuple(w.shape)}")
        merged[weight] = (w.double() + scaling * (b @ a)).to(w.dtype)
    return merged


def read_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json, tensors) of a peft LoRA folder."""
    from safetensors.torch import load_file

    config_file, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise CheckpointError(f"{folder} is not a peft adapter folder (adapter_config.json + adapter_model.safetensors)")
    config = json.loads(config_file.read_text())
    if (config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("use_rslora")
            or config.get("rank_pattern") or config.get("alpha_pattern")):
        raise CheckpointError(f"{config_file}: only plain LoRA adapters (one r and lora_alpha, no DoRA or "
                              "rsLoRA) are supported")
    return config, load_file(str(weights))


def load_model_folder(folder: str | Path, base: str = "", dtype: torch.dtype = torch.float32):
    """(corefm OpenELM, OpenELMConfig) of a release folder, or of a peft adapter folder merged into its
    base (``base`` overrides adapter_config.json's ``base_model_name_or_path``)."""
    from projects.openelm.convert import assign_weights, load_hf

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        return load_hf(folder, dtype=dtype)
    config, adapter = read_adapter(folder)
    base = base or config.get("base_model_name_or_path") or ""
    if not base:
        raise CheckpointError(f"{folder}/adapter_config.json names no base model; pass the base")
    model, cfg = load_hf(base, dtype=torch.float32)
    scaling = float(config["lora_alpha"]) / float(config["r"])
    merged = merge_adapter({k: v for k, v in model.state_dict().items()}, adapter, scaling)
    with torch.device("meta"):
        from projects.openelm.model import OpenELM

        model = OpenELM(cfg)
    assign_weights(model, merged, str(folder), dtype)
    return model, cfg


# --- the release writer -----------------------------------------------------------------------
def chat_tokenizer_dir(recipe: dict) -> Path:
    """The chat tokenizer instruct-pack wrote beside the run's training shards (checksums checked)."""
    train = Path(str(recipe.get("data", {}).get("train", "")).partition("#")[0])
    manifest = train / "dataset.json"
    if not manifest.is_file():
        raise CheckpointError(f"{manifest} is missing: the release ships the tokenizer (with the chat template) "
                              "that `corefm openelm instruct-pack` wrote beside the training shards")
    record = json.loads(manifest.read_text()).get("producer", {}).get("tokenizer", {})
    folder = (train / record.get("path", "../tokenizer")).resolve()
    problem = check_tokenizer(folder, record)
    if problem:
        raise CheckpointError(f"cannot release the chat tokenizer: {problem}")
    return folder


def check_same_base(frozen: dict[str, torch.Tensor], base: dict[str, torch.Tensor], where: str) -> None:
    """The run's frozen weights are the base's (at bf16 or fp32 training precision)."""
    if set(frozen) != set(base):
        raise CheckpointError(f"{where}: the run's weights are not those of model.base (names differ)")
    for k, v in frozen.items():
        ref = base[k].float()
        if not (torch.equal(v.float(), ref) or torch.equal(v.float(), ref.bfloat16().float())):
            raise CheckpointError(f"{where}: {k} differs from model.base: the base changed since this run "
                                  "trained on it; release against the same base")


def _card(title: str, recipe: dict, final: dict, body: str) -> str:
    model = recipe["model"]
    evals = final.get("eval") or {}
    loss = f"{evals['loss']:.4f} nats per response token" if isinstance(evals.get("loss"), float) else "not evaluated"
    return f"""---
library_name: {"peft" if "adapter" in title else "transformers"}
tags: [corefm, openelm, instruction-tuning, {model.get('method', 'lora')}]
---
# {title}

OpenELM instruction-tuned with corefm (`openelm_finetune` / `instruct_lm`) from `{model['base']}`:
{model.get('method')} fine-tuning{f" (LoRA r {model['lora_r']}, alpha {model['lora_alpha']:g}, dropout {model['lora_dropout']:g}, on {', '.join(model['lora_targets'])})" if model.get('method') == 'lora' else ''},
{final.get('step', 0)} steps on `{recipe.get('data', {}).get('train', '')}`; loss only on the assistant's tokens.
Held-out response loss: {loss}.

The tokenizer carries the chat template (`tokenizer_config.json`, `chat_template`):
`### User:\\n...\\n\\n### Assistant:\\n...</s>`; prompt with
`tokenizer.apply_chat_template(messages, add_generation_prompt=True)`.

{body}
"""


MERGED_USAGE = """## Usage
```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{path}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{path}", trust_remote_code=True)
ids = tokenizer.apply_chat_template([{{"role": "user", "content": 'What does the noun "harbor" mean?'}}],
                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
print(tokenizer.decode(model.generate(ids, max_new_tokens=48)[0][ids.shape[1]:], skip_special_tokens=True))
```
"""

ADAPTER_USAGE = """## Usage
```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base = AutoModelForCausalLM.from_pretrained("{base}", trust_remote_code=True)
model = PeftModel.from_pretrained(base, "{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")
```
"""


def write_adapter(out: Path, adapter: dict[str, torch.Tensor], cfg: FinetuneConfig, base_name: str,
                  tokenizer_dir: Path | None) -> list[Path]:
    """A peft LoRA folder: adapter_config.json, adapter_model.safetensors (+ tokenizer files)."""
    from corefm.train.export import save_safetensors_atomic
    from projects.openelm.instruct.model import lora_config

    out.mkdir(parents=True, exist_ok=True)
    lora_config(cfg, base_name).save_pretrained(str(out))
    files = [out / "adapter_config.json",
             save_safetensors_atomic(adapter, out / "adapter_model.safetensors", {"format": "pt"})]
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, out / name)
                files.append(out / name)
    return files


def base_reference(base: str) -> str:
    """adapter_config.json's base_model_name_or_path: an absolute folder, or the Hub id as given."""
    return str(Path(base).resolve()) if Path(base).is_dir() else base


@register_release("openelm_finetune")
def write_finetune_release(run_dir: Path, out_dir: Path, recipe: dict) -> list[Path]:
    from safetensors.torch import load_file

    from corefm.train.config import from_dict, model_architecture
    from projects.openelm.convert import assign_weights, load_hf, save_hf
    from projects.openelm.model import OpenELM

    _, final = read_run(run_dir)
    cfg = from_dict(FinetuneConfig, model_architecture(recipe["model"]), "model")
    tokenizer_dir = chat_tokenizer_dir(recipe)
    state = load_file(str(run_dir / "model.safetensors"))
    base_model, base_cfg = load_hf(cfg.base, dtype=torch.float32)
    base_state = dict(base_model.state_dict())
    frozen, adapter = split_run_state(state)
    if cfg.method == "lora":
        if not adapter:
            raise CheckpointError(f"{run_dir}/model.safetensors holds no LoRA weights")
        check_same_base(frozen, base_state, str(run_dir / "model.safetensors"))
        merged = merge_adapter(base_state, adapter, cfg.lora_alpha / cfg.lora_r)
    else:
        merged = frozen
    with torch.device("meta"):
        model = OpenELM(base_cfg)
    assign_weights(model, merged, str(run_dir / "model.safetensors"), torch.float32)
    files = save_hf(model, base_cfg, out_dir, tokenizer_dir=tokenizer_dir)
    (out_dir / "recipe.json").write_text(json.dumps(recipe, indent=2))
    files.append(out_dir / "recipe.json")
    body = MERGED_USAGE.format(path=out_dir.name)
    if cfg.method == "lora":
        body += f"\nThe adapter alone (peft) is in `{ADAPTER_DIR}/`; this folder is the base with it merged.\n"
        adapter_dir = out_dir / ADAPTER_DIR
        files += write_adapter(adapter_dir, adapter, cfg, base_reference(cfg.base), tokenizer_dir)
        (adapter_dir / "README.md").write_text(_card(f"{run_dir.name} (LoRA adapter)", recipe, final,
                                                     ADAPTER_USAGE.format(base=base_reference(cfg.base),
                                                                          path=f"{out_dir.name}/{ADAPTER_DIR}")))
        files.append(adapter_dir / "README.md")
    (out_dir / "README.md").write_text(_card(f"{run_dir.name} (merged)", recipe, final, body))
    files.append(out_dir / "README.md")
    return files


__all__ = ["LORA_TARGETS", "adapter_key", "base_key", "load_model_folder", "merge_adapter", "split_run_state",
           "write_adapter", "write_finetune_release"]
