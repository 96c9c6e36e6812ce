"""CoreNet OpenELM checkpoints <-> corefm OpenELM / Hugging Face release folders.

Apple trained OpenELM with CoreNet (github.com/apple/corenet): the model is
``corenet/modeling/models/language_modeling/general_gpt.py`` (``GeneralGPTModel``), chosen by a
YAML recipe such as ``projects/openelm/pretraining_configs/openelm_270M.yaml``. That recipe holds
no architecture numbers, only a name into CoreNet's ``gpt_configs`` table:

    model.language_modeling.name: general_gpt
    model.language_modeling.general_gpt.model_name: OpenELM-270M     # a gpt_configs key
    model.language_modeling.general_gpt.vocab_size: 32128            # overrides the table
    model.language_modeling.general_gpt.max_context_length: 2048     # overrides the table
    model.language_modeling.general_gpt.padding_index: 32000         # training only (ignored loss target)

so :data:`CORENET_MODELS` restates that table. CoreNet's parameter names are corefm's (both follow
Apple's module tree) except the untied output layer, ``classifier.weight`` in CoreNet and
``lm_head.weight`` in corefm/HF. CoreNet saves either a bare model state dict
(``checkpoint_last.pt``, ``checkpoint_best.pt``, what ``model.pretrained`` loads) or a training
checkpoint (``training_checkpoint_last.pt``) holding it under ``model_state_dict`` (and the EMA
model's under ``ema_state_dict``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from corefm.errors import CheckpointError, ConfigError
from projects.openelm.config import OpenELMConfig, layer_specs
from projects.openelm.convert import TOKENIZER_FILES, assign_weights, load_hf, save_hf
from projects.openelm.model import OpenELM

PREFIX = "model.language_modeling.general_gpt."
RECIPE_KEYS = ("model_name", "vocab_size", "max_context_length", "padding_index")

# GPTConfig's defaults, for the fields a gpt_configs entry does not set (CoreNet's defaults, which
# differ from corefm's OpenELMConfig defaults, e.g. untied embeddings and no q/k norm).
_GPT_DEFAULTS = dict(qkv_multipliers=1.0, num_gqa_groups=1, ffn_multipliers=4.0, ffn_dim_divisor=256,
                     normalize_qk_projections=False, share_input_output_layers=False, rope_freq_constant=10000,
                     rope_max_length=4096, norm_eps=1e-6)
# CoreNet's gpt_configs, field for field (its FFN is always GLU + swish and its norm RMSNorm, eps 1e-6).
CORENET_MODELS: dict[str, dict] = {
    "gpt-test": dict(num_transformer_layers=1, model_dim=128, head_dim=64, num_gqa_groups=1,
                     normalize_qk_projections=True, share_input_output_layers=True,
                     ffn_multipliers=(0.25, 0.75), qkv_multipliers=(0.25, 0.5)),
    "gpt-1_3B": dict(num_transformer_layers=24, model_dim=2048, head_dim=64, ffn_multipliers=3.0, num_gqa_groups=4,
                     normalize_qk_projections=True, share_input_output_layers=True),
    **{name: dict(num_transformer_layers=n, model_dim=d, head_dim=hd, num_gqa_groups=4,
                  normalize_qk_projections=True, share_input_output_layers=True,
                  ffn_multipliers=(0.5, 4.0), qkv_multipliers=(0.5, 1.0))
       for name, n, d, hd in (("OpenELM-270M", 16, 1280, 64), ("OpenELM-450M", 20, 1536, 64),
                              ("OpenELM-1_1B", 28, 2048, 64), ("OpenELM-3B", 36, 3072, 128))},
}
# Names inside one decoder layer (TransformerDecoderLayer: attn, ffn, attn_norm, ffn_norm).
LAYER_PARAMS = ("attn_norm.weight", "attn.qkv_proj.weight", "attn.q_norm.weight", "attn.k_norm.weight",
                "attn.out_proj.weight", "ffn_norm.weight", "ffn.proj_1.weight", "ffn.proj_2.weight")
# Top-level CoreNet name -> corefm name.
TOP_PARAMS = {"token_embeddings.weight": "token_embeddings.weight", "norm.weight": "norm.weight",
              "classifier.weight": "lm_head.weight"}
_LAYER_KEY = re.compile(r"layers\.(\d+)\.(.+)")
# Where CoreNet's training checkpoint keeps a model state dict (``ema_state_dict`` with --ema).
STATE_KEYS = ("model_state_dict", "state_dict", "model")


def from_corenet_name(key: str) -> str | None:
    """A CoreNet general_gpt parameter name -> corefm's, or None if CoreNet's model has no such name."""
    if key in TOP_PARAMS:
        return TOP_PARAMS[key]
    m = _LAYER_KEY.fullmatch(key)
    return key if m and m.group(2) in LAYER_PARAMS else None


def to_corenet_name(key: str) -> str:
    """A corefm OpenELM parameter name -> CoreNet's."""
    return "classifier.weight" if key == "lm_head.weight" else key


@dataclass
class CoreNetRecipe:
    """The ``model.language_modeling.general_gpt.*`` values of a CoreNet YAML recipe."""

    path: str
    model_name: str
    vocab_size: int
    max_context_length: int
    padding_index: int | None = None
    tokenizer_path: str | None = None  # text_tokenizer.sentence_piece.model_path, if set

    def describe(self) -> str:
        return f"{self.path} (model_name {self.model_name!r}, vocab_size {self.vocab_size})"


def _flatten(d: Mapping, parent: str = "") -> dict:
    """Nested YAML mapping -> {"a.b.c": value}, as CoreNet flattens a recipe before reading it."""
    out: dict = {}
    for k, v in d.items():
        key = f"{parent}.{k}" if parent else str(k)
        out.update(_flatten(v, key) if isinstance(v, Mapping) else {key: v})
    return out


def read_recipe(path: str | Path) -> CoreNetRecipe:
    """Read a CoreNet recipe's general_gpt keys; unknown or ill-typed ones are a ConfigError."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"CoreNet recipe {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        first = (str(e).strip().splitlines() or ["parse error"])[0]
        raise ConfigError(f"CoreNet recipe {path}: not valid YAML ({first})") from None
    flat = _flatten(raw) if isinstance(raw, Mapping) else {}
    name = flat.get("model.language_modeling.name", "general_gpt")
    if name != "general_gpt":
        raise ConfigError(f"{path}: model.language_modeling.name is {name!r}; only general_gpt (OpenELM) converts")
    # CoreNet only warns about keys it does not know; here one would silently change nothing, so refuse.
    unknown = [k for k in flat if k.startswith(PREFIX) and k[len(PREFIX):] not in RECIPE_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown CoreNet key {unknown[0]} (general_gpt takes {', '.join(RECIPE_KEYS)})")
    values = {}
    for key in RECIPE_KEYS:
        v = flat.get(PREFIX + key)
        if v is None and key != "padding_index":
            raise ConfigError(f"{path}: {PREFIX}{key} is not set")
        want = str if key == "model_name" else int
        if v is not None and (not isinstance(v, want) or isinstance(v, bool)):
            raise ConfigError(f"{path}: {PREFIX}{key} must be {want.__name__}, got {v!r}")
        values[key] = v
    tok = flat.get("text_tokenizer.sentence_piece.model_path")
    return CoreNetRecipe(path=str(path), tokenizer_path=tok if isinstance(tok, str) else None, **values)


def corenet_config(model_name: str, vocab_size: int, max_context_length: int,
                   models: Mapping[str, dict] = CORENET_MODELS, where: str = "") -> OpenELMConfig:
    """The corefm config of CoreNet's ``GPTConfig.from_name(model_name, vocab_size, max_context_length)``."""
    if model_name not in models:
        raise ConfigError(f"{where or 'CoreNet'}: {PREFIX}model_name {model_name!r} is not one of CoreNet's "
                          f"general_gpt configs ({', '.join(models)})")
    fields = {**_GPT_DEFAULTS, **models[model_name]}
    return OpenELMConfig(**fields, vocab_size=vocab_size, max_context_length=max_context_length)


def read_checkpoint(path: str | Path, ema: bool = False) -> dict[str, torch.Tensor]:
    """The model state dict of a CoreNet checkpoint (bare or training dict), without DDP's ``module.``."""
    try:
        # weights_only: a training checkpoint holds only tensors, numbers and optimizer dicts.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # unpickling errors come in many types; any of them means "not readable"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    wanted = ("ema_state_dict",) if ema else STATE_KEYS
    found = next((k for k in wanted if isinstance(obj.get(k), Mapping)), None)
    if found is not None:
        obj = obj[found]
    elif ema:
        raise CheckpointError(f"{path}: --ema given but the checkpoint has no ema_state_dict")
    state = dict(obj)
    if not state:
        raise CheckpointError(f"{path}: the model state dict is empty")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry {bad[0]!r} is not a tensor: neither a model state dict nor a CoreNet "
                              f"training checkpoint (which keeps one under {' / '.join(STATE_KEYS)})")
    # DistributedDataParallel wraps the model as `.module`; CoreNet unwraps before saving, other savers may not.
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def from_corenet_state(state: dict[str, torch.Tensor], cfg: OpenELMConfig, where: str,
                       recipe: str) -> dict[str, torch.Tensor]:
    """CoreNet-named tensors -> corefm-named ones, checked against cfg (what ``recipe`` describes).

    Every problem is one CheckpointError naming the key: a name CoreNet's model does not have, a
    layer count, parameter or shape that the recipe's model does not have.
    """
    unknown = sorted(k for k in state if from_corenet_name(k) is None)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise CheckpointError(f"{where}: {unknown[0]}{more} is not a CoreNet general_gpt parameter")
    with torch.device("meta"):
        expected = {to_corenet_name(k): v.shape for k, v in OpenELM(cfg).state_dict().items()}
    layers = {int(m.group(1)) for k in state if (m := _LAYER_KEY.fullmatch(k))}
    n, found = cfg.num_transformer_layers, max(layers, default=-1) + 1
    if found != n:
        raise CheckpointError(f"{where}: has {found} transformer layer(s) (layers.0-{found - 1}) but {recipe} "
                              f"has {n}")
    extra = sorted(k for k in state if k not in expected)
    if extra:
        why = {"classifier.weight": "an untied output layer, but the recipe's model shares input and output layers"}
        raise CheckpointError(f"{where}: {extra[0]} does not belong to {recipe}"
                              + (f" ({why[extra[0]]})" if extra[0] in why else ""))
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{where}: missing {missing[0]}{more}, which {recipe} has")
    for key, shape in expected.items():
        got = tuple(state[key].shape)
        if got == tuple(shape):
            continue
        if key == "token_embeddings.weight" and got[1:] == tuple(shape[1:]):
            raise CheckpointError(f"{where}: {key} has {got[0]} rows but {recipe} sets {PREFIX}vocab_size to "
                                  f"{shape[0]}")
        raise CheckpointError(f"{where}: {key} has shape {got} but {recipe} implies {tuple(shape)}")
    return {from_corenet_name(k): v for k, v in state.items()}  # type: ignore[misc]


def load_corenet(checkpoint: str | Path, recipe: str | Path | CoreNetRecipe, ema: bool = False,
                 vocab_size: int | None = None,
                 models: Mapping[str, dict] = CORENET_MODELS) -> tuple[OpenELM, OpenELMConfig, CoreNetRecipe]:
    """corefm OpenELM holding a CoreNet checkpoint's weights (their dtype kept), its config and the recipe.

    vocab_size keeps only the first rows of the embedding (and output layer): CoreNet's OpenELM
    recipes pad LLaMA's 32,000 tokens (+ a padding token) to 32,128 for speed; Apple's HF
    releases keep 32,000.
    """
    rec = recipe if isinstance(recipe, CoreNetRecipe) else read_recipe(recipe)
    cfg = corenet_config(rec.model_name, rec.vocab_size, rec.max_context_length, models, rec.path)
    state = from_corenet_state(read_checkpoint(checkpoint, ema), cfg, str(checkpoint), rec.describe())
    if vocab_size is not None:
        if not 0 < vocab_size <= cfg.vocab_size:
            raise ConfigError(f"--vocab-size {vocab_size}: must be in 1..{cfg.vocab_size} (the checkpoint's rows)")
        cfg = replace(cfg, vocab_size=vocab_size)
        state = {k: v[:vocab_size] if k in ("token_embeddings.weight", "lm_head.weight") else v
                 for k, v in state.items()}
    with torch.device("meta"):
        model = OpenELM(cfg)
    assign_weights(model, state, str(checkpoint))
    return model.eval(), cfg, rec


def convert_from_corenet(checkpoint: str | Path, recipe: str | Path, out_dir: str | Path,
                         tokenizer_dir: str | Path | None = None, dtype: torch.dtype | None = None,
                         ema: bool = False, vocab_size: int | None = None,
                         models: Mapping[str, dict] = CORENET_MODELS,
                         ) -> tuple[list[Path], OpenELMConfig, CoreNetRecipe]:
    """Write a ``transformers`` release folder (config.json, safetensors, code, tokenizer) from CoreNet."""
    if tokenizer_dir is not None and not any((Path(tokenizer_dir) / f).is_file() for f in TOKENIZER_FILES):
        # checked first: save_hf would find out only after writing the weights
        raise ConfigError(f"--tokenizer {tokenizer_dir}: no tokenizer files there ({', '.join(TOKENIZER_FILES)})")
    model, cfg, rec = load_corenet(checkpoint, recipe, ema=ema, vocab_size=vocab_size, models=models)
    return save_hf(model, cfg, out_dir, tokenizer_dir=tokenizer_dir, dtype=dtype), cfg, rec


def _same_architecture(a: OpenELMConfig, b: OpenELMConfig) -> bool:
    """Same weights layout and computation (widths per layer, norms, tying, RoPE base)."""
    keys = ("num_transformer_layers", "model_dim", "head_dim", "normalize_qk_projections",
            "share_input_output_layers", "rope_freq_constant", "norm_eps")
    return all(getattr(a, k) == getattr(b, k) for k in keys) and layer_specs(a) == layer_specs(b)


def corenet_model_name(cfg: OpenELMConfig, models: Mapping[str, dict] = CORENET_MODELS) -> str:
    """The gpt_configs name whose model is cfg's; ConfigError if CoreNet has none."""
    for name in models:
        if _same_architecture(corenet_config(name, cfg.vocab_size, cfg.max_context_length, models), cfg):
            return name
    raise ConfigError(f"no CoreNet general_gpt config has this architecture ({cfg.num_transformer_layers} layers, "
                      f"model_dim {cfg.model_dim}, head_dim {cfg.head_dim}); CoreNet knows {', '.join(models)}")


def corenet_recipe(cfg: OpenELMConfig, model_name: str, padding_index: int | None = None) -> dict:
    """The ``model:`` section of a CoreNet recipe for cfg (nested, as CoreNet's YAML files write it)."""
    general = {"model_name": model_name, "vocab_size": cfg.vocab_size, "max_context_length": cfg.max_context_length}
    if padding_index is not None:
        general["padding_index"] = padding_index
    return {"model": {"language_modeling": {"name": "general_gpt", "general_gpt": general}}}


def convert_to_corenet(release: str | Path, out: str | Path, config_out: str | Path | None = None,
                       models: Mapping[str, dict] = CORENET_MODELS) -> tuple[list[Path], OpenELMConfig, str | None]:
    """Release folder (or Hub id) -> CoreNet's bare model state dict (what ``model.pretrained`` loads),
    plus, with config_out, a recipe ``model:`` section naming the matching gpt_configs entry."""
    import yaml

    model, cfg = load_hf(release)
    # Find the name before writing anything, so a failure leaves no half-finished output.
    name = corenet_model_name(cfg, models) if config_out is not None else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {to_corenet_name(k): v.detach() for k, v in model.state_dict().items()}
    partial = out.with_name(out.name + ".partial")  # a crash mid-write leaves no truncated checkpoint
    torch.save(state, partial)
    partial.replace(out)
    files = [out]
    if config_out is not None:
        Path(config_out).parent.mkdir(parents=True, exist_ok=True)
        Path(config_out).write_text(yaml.safe_dump(corenet_recipe(cfg, name), sort_keys=False))
        files.append(Path(config_out))
    return files, cfg, name
