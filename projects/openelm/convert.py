"""corefm OpenELM <-> Hugging Face / Apple checkpoint folders.

The two state dicts differ only in names: Apple's are corefm's with ``transformer.`` in front,
except the untied output layer, which is ``lm_head.weight`` in both (released models are tied).
A folder holds ``config.json`` (Apple's field names, ``auto_map`` for ``trust_remote_code``),
``model.safetensors`` (or shards with ``model.safetensors.index.json``) and the self-contained
``configuration_openelm.py`` / ``modeling_openelm.py``. Readers take such a folder or a Hub id
``org/name`` (:func:`resolve_release`). CoreNet checkpoints: :mod:`projects.openelm.corenet`.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from corefm.errors import CheckpointError
from corefm.train.export import save_safetensors_atomic
from projects.openelm.config import OpenELMConfig, layer_specs, linspace
from projects.openelm.hf.configuration_openelm import OpenELMConfig as HFOpenELMConfig
from projects.openelm.model import OpenELM
from projects.openelm.tokenizer import TOKENIZER_FILES

HF_DIR = Path(__file__).parent / "hf"
CODE_FILES = ("configuration_openelm.py", "modeling_openelm.py")
AUTO_MAP = {
    "AutoConfig": "configuration_openelm.OpenELMConfig",
    "AutoModelForCausalLM": "modeling_openelm.OpenELMForCausalLM",
}
# Apple's OpenELMModel builds an unused `classifier` when embeddings are untied (the logits
# come from lm_head); it carries no information, so it is dropped on load.
_IGNORED_HF_KEYS = ("transformer.classifier.weight",)


def to_hf_name(key: str) -> str:
    """One corefm OpenELM parameter name -> its Apple/HF name."""
    return key if key == "lm_head.weight" else f"transformer.{key}"


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """corefm OpenELM names -> Apple/HF names."""
    return {to_hf_name(k): v for k, v in state.items()}


def from_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apple/HF names -> corefm OpenELM names; a key outside both layouts is an error."""
    out, stray = {}, []
    for k, v in state.items():
        if k in _IGNORED_HF_KEYS:
            continue
        if k == "lm_head.weight":
            out[k] = v
        elif k.startswith("transformer."):
            out[k.removeprefix("transformer.")] = v
        else:
            stray.append(k)
    if stray:
        raise CheckpointError(f"not OpenELM weights: unexpected key(s) {_names(stray)}")
    return out


def _names(keys: list[str], limit: int = 6) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _compact(mult: float | tuple[float, ...], n: int) -> float | tuple[float, ...]:
    """A per-layer multiplier list back to the (first, last) pair when that regenerates it exactly."""
    if isinstance(mult, (int, float)):
        return float(mult)
    mult = tuple(float(m) for m in mult)
    if len(mult) == n and n > 2 and list(mult) == [round(v, 2) for v in linspace(mult[0], mult[-1], n)]:
        return (mult[0], mult[-1])
    return mult


def to_hf_config(cfg: OpenELMConfig, dtype: torch.dtype | None = None) -> HFOpenELMConfig:
    """The HF config of a corefm config, checked to give the same per-layer widths."""
    mults = {k: (getattr(cfg, k) if isinstance(getattr(cfg, k), (int, float)) else list(getattr(cfg, k)))
             for k in ("qkv_multipliers", "ffn_multipliers")}
    hf = HFOpenELMConfig(
        vocab_size=cfg.vocab_size, max_context_length=cfg.max_context_length,
        num_transformer_layers=cfg.num_transformer_layers, model_dim=cfg.model_dim, head_dim=cfg.head_dim,
        num_gqa_groups=cfg.num_gqa_groups, ffn_dim_divisor=cfg.ffn_dim_divisor, ffn_with_glu=True,
        activation_fn_name="swish", normalization_layer_name="rms_norm",
        normalize_qk_projections=cfg.normalize_qk_projections,
        share_input_output_layers=cfg.share_input_output_layers, rope_freq_constant=cfg.rope_freq_constant,
        rope_max_length=cfg.rope_max_length, initializer_range=cfg.init_std, rms_norm_eps=cfg.norm_eps,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, **mults,
    )
    specs = layer_specs(cfg)
    derived = (hf.num_query_heads, hf.num_kv_heads, hf.ffn_dims)
    if derived != ([s.num_heads for s in specs], [s.num_kv_heads for s in specs], [s.ffn_dim for s in specs]):
        raise CheckpointError(f"HF config derives different layer widths {derived} from corefm's {specs}")
    hf.architectures = ["OpenELMForCausalLM"]
    hf.auto_map = dict(AUTO_MAP)
    if dtype is not None:
        hf.dtype = dtype
    return hf


def from_hf_config(raw: dict) -> OpenELMConfig:
    """corefm config from an Apple/HF ``config.json`` dict; unsupported variants are errors."""
    if raw.get("model_type", "openelm") != "openelm":
        raise CheckpointError(f"config.json has model_type {raw.get('model_type')!r}, not 'openelm'")
    unsupported = {"ffn_with_glu": True, "normalization_layer_name": "rms_norm"}
    for key, want in unsupported.items():
        if raw.get(key, want) != want:
            raise CheckpointError(f"config.json {key}={raw[key]!r}: corefm's OpenELM supports only {want!r}")
    if raw.get("activation_fn_name", "swish") not in ("swish", "silu"):
        raise CheckpointError(f"config.json activation_fn_name={raw['activation_fn_name']!r}: only swish/silu")
    try:
        n = int(raw["num_transformer_layers"])
        kwargs = dict(
            num_transformer_layers=n, model_dim=int(raw["model_dim"]), head_dim=int(raw["head_dim"]),
            num_gqa_groups=int(raw.get("num_gqa_groups") or 1),
            ffn_dim_divisor=int(raw.get("ffn_dim_divisor", 256)), vocab_size=int(raw.get("vocab_size", 32000)),
            max_context_length=int(raw.get("max_context_length", 2048)),
            rope_freq_constant=int(raw.get("rope_freq_constant", 10000)),
            rope_max_length=int(raw.get("rope_max_length", 4096)),
            normalize_qk_projections=bool(raw.get("normalize_qk_projections", False)),
            share_input_output_layers=bool(raw.get("share_input_output_layers", False)),
            norm_eps=float(raw.get("rms_norm_eps", 1e-6)), init_std=float(raw.get("initializer_range", 0.02)),
            qkv_multipliers=_compact(raw.get("qkv_multipliers", 1.0), n),
            ffn_multipliers=_compact(raw.get("ffn_multipliers", 4.0), n),
        )
    except KeyError as e:
        raise CheckpointError(f"config.json lacks the OpenELM field {e.args[0]!r}") from None
    for key in ("bos_token_id", "eos_token_id"):
        if isinstance(raw.get(key), int):
            kwargs[key] = raw[key]
    return OpenELMConfig(**kwargs)


def save_hf(
    model: OpenELM,
    cfg: OpenELMConfig,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> list[Path]:
    """Write a folder that ``transformers`` loads (registered classes or ``trust_remote_code``).

    dtype casts the floating weights (e.g. torch.bfloat16 for a release); default keeps them.
    Tokenizer files found in tokenizer_dir are copied beside the model.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu()
             for k, v in model.state_dict().items()}
    hf_cfg = to_hf_config(cfg, dtype or next(iter(state.values())).dtype)
    hf_cfg.save_pretrained(out)
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id).save_pretrained(out)
    files = [out / "config.json", out / "generation_config.json"]
    files.append(save_safetensors_atomic(to_hf_state_dict(state), out / "model.safetensors", {"format": "pt"}))
    for name in CODE_FILES:
        shutil.copyfile(HF_DIR / name, out / name)
        files.append(out / name)
    if tokenizer_dir is not None:
        found = [Path(tokenizer_dir) / n for n in TOKENIZER_FILES if (Path(tokenizer_dir) / n).is_file()]
        if not found:
            raise CheckpointError(f"{tokenizer_dir} holds no tokenizer files ({', '.join(TOKENIZER_FILES)})")
        for f in found:
            shutil.copyfile(f, out / f.name)
            files.append(out / f.name)
    return files


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder: model.safetensors, sharded safetensors (index json) or pytorch_model.bin."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no weight_map")
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise CheckpointError(f"{index} names shard {shard}, which is missing")
            state.update(load_file(str(folder / shard)))
        return state
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise CheckpointError(f"{folder} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


# An ``org/name`` Hub repository id (huggingface_hub's own validator is stricter; this only decides
# whether a string that is not a local folder should be tried on the Hub at all).
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# Weights in other frameworks' formats, never read here: not worth downloading.
_HUB_IGNORE = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "*.gguf", "*.tflite", "*.mlmodel", "*.mlpackage/*"]


def resolve_release(path_or_id: str | Path) -> Path:
    """A release folder: path_or_id itself when it is a local folder, else the snapshot of the Hub
    repository ``org/name`` from ``huggingface_hub.snapshot_download`` (the local cache only when
    ``HF_HUB_OFFLINE=1``). Anything else is one CheckpointError saying what was tried.
    """
    text = str(path_or_id)
    if Path(text).is_dir():  # a local folder wins, even one named like org/name
        return Path(text)
    if not HUB_ID.fullmatch(text):
        raise CheckpointError(f"{text}: no such folder (and not an org/name Hub id)")
    from huggingface_hub import constants, snapshot_download

    where = (f"the cache {constants.HF_HUB_CACHE} only (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE
             else f"the Hub (cache {constants.HF_HUB_CACHE})")
    try:
        return Path(snapshot_download(repo_id=text, ignore_patterns=_HUB_IGNORE))
    except Exception as e:  # not found, offline miss, network, auth: all mean "this id gave no folder"
        first = (str(e).strip().splitlines() or [""])[0]
        reason = first.split(". ")[0][:300] or type(e).__name__
        raise CheckpointError(f"{text}: no such local folder, and as a Hub id it could not be resolved through "
                              f"{where}: {type(e).__name__}: {reason}") from None


def load_hf(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[OpenELM, OpenELMConfig]:
    """Build a corefm OpenELM from a folder in Apple's (or our) HF layout, for continued training.

    path may also be a Hub id ``org/name`` (see :func:`resolve_release`). The model is created on
    the meta device and the checkpoint's tensors are assigned (cast to dtype), so a 3B model is
    never initialised only to be overwritten.
    """
    folder = resolve_release(path)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not an OpenELM folder (no config.json)")
    cfg = from_hf_config(json.loads((folder / "config.json").read_text()))
    state = from_hf_state_dict(read_hf_weights(folder))
    with torch.device("meta"):
        model = OpenELM(cfg)
    assign_weights(model, state, f"{folder}", dtype, name=to_hf_name)
    return model, cfg


def assign_weights(model: OpenELM, state: dict[str, torch.Tensor], where: str,
                   dtype: torch.dtype | None = None, name: Callable[[str], str] = str) -> None:
    """Load corefm-named tensors into model (meta or real) by assignment, after checking that the
    names and shapes are exactly the model's; any difference is one CheckpointError naming them
    (as ``name(key)``, e.g. the HF names of the file being read)."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = [name(k) for k in expected if k not in state]
    unexpected = [name(k) for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {_names(missing)}"] if missing else []) + (
            [f"unexpected {_names(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{where}: weights do not match the config: {'; '.join(parts)}")
    wrong = [f"{name(k)} {tuple(state[k].shape)} (config implies {tuple(s)})"
             for k, s in expected.items() if state[k].shape != s]
    if wrong:
        raise CheckpointError(f"{where}: wrong shape for {len(wrong)} tensor(s): {'; '.join(wrong[:4])}")
    cast = {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(cast, strict=True, assign=True)
