"""Build the DeepSpeed config dict from a recipe: a ZeRO preset plus the recipe's batch settings."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from corefm.errors import ConfigError
from corefm.train.config import Recipe


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_preset(zero_stage: int) -> dict:
    """The ds_config preset shipped beside the trainer, ``corefm/train/ds_configs/zero<N>.json``."""
    text = resources.files("corefm.train").joinpath("ds_configs", f"zero{zero_stage}.json").read_text()
    return json.loads(text)


def build_ds_config(recipe: Recipe) -> dict:
    ds = recipe.deepspeed
    cfg = load_preset(ds.zero_stage)
    if ds.config_file:
        path = Path(ds.config_file)
        if not path.is_file():
            raise ConfigError(f"deepspeed.config_file: file not found: {path}")
        try:
            cfg = _merge(cfg, json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ConfigError(f"deepspeed.config_file: {path} is not valid JSON ({e.msg})") from None
    cfg = _merge(cfg, ds.config)
    # The recipe owns these, so the preset cannot silently disagree with the training loop.
    cfg["train_micro_batch_size_per_gpu"] = recipe.train.micro_batch_size
    cfg["gradient_accumulation_steps"] = recipe.train.grad_accum
    cfg["gradient_clipping"] = recipe.train.grad_clip
    cfg.pop("train_batch_size", None)
    cfg["bf16"] = {"enabled": ds.precision == "bf16"}
    cfg["fp16"] = {"enabled": False}
    cfg.setdefault("zero_optimization", {})["stage"] = ds.zero_stage
    return cfg
