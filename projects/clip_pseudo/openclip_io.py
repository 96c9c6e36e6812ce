"""Weights in open_clip's format, both ways.

``save_open_clip`` writes a folder that ``open_clip.create_model_and_transforms("local-dir:DIR")``
(and ``hf-hub:org/name`` once uploaded) loads with no corefm code: ``open_clip_config.json``
(``model_cfg`` + ``preprocess_cfg``) and ``open_clip_model.safetensors`` with open_clip's tensor
names. ``load_open_clip_checkpoint`` builds our model from an open_clip checkpoint file or folder.
Task heads are not part of open_clip's CLIP; they go to ``heads.safetensors`` + ``heads.json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from corefm.errors import CheckpointError
from projects.clip_pseudo.config import ClipConfig, from_open_clip_cfg, require_vit_tower, to_open_clip_cfg
from projects.clip_pseudo.heads import HeadSpec

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# corefm TransformerBlock names -> open_clip ResidualAttentionBlock names (same tensors, same layout:
# the fused qkv projection is nn.MultiheadAttention's in_proj).
_BLOCK = (("attn_norm.", "ln_1."), ("attn.qkv_proj.weight", "attn.in_proj_weight"),
          ("attn.qkv_proj.bias", "attn.in_proj_bias"), ("attn.out_proj.", "attn.out_proj."),
          ("ffn_norm.", "ln_2."), ("ffn.fc1.", "mlp.c_fc."), ("ffn.fc2.", "mlp.c_proj."))
# Whole-name renames; projections are transposed (open_clip stores x @ proj, we use Linear).
_RENAMES = {"visual.patch_embed.proj.weight": "visual.conv1.weight", "visual.class_token": "visual.class_embedding",
            "visual.positions.weight": "visual.positional_embedding",
            "text.token_embeddings.weight": "token_embedding.weight",
            "text.positions.weight": "positional_embedding"}
_PROJ = {"visual.proj.weight": "visual.proj", "text.proj.weight": "text_projection"}
_PREFIX = (("visual.ln_pre.", "visual.ln_pre."), ("visual.ln_post.", "visual.ln_post."),
           ("text.ln_final.", "ln_final."))
_OURS_BLOCK = re.compile(r"^(visual|text)\.blocks\.(\d+)\.(.+)$")
_THEIRS_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def _block_name(rest: str, forward: bool) -> str | None:
    for ours, theirs in _BLOCK:
        a, b = (ours, theirs) if forward else (theirs, ours)
        if rest.startswith(a):
            return b + rest[len(a):]
    return None


def to_open_clip_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our CLIP state dict (heads are left out) -> open_clip CLIP state dict (scalar logit_scale)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name.startswith("heads."):
            continue
        if m := _OURS_BLOCK.match(name):
            tower, i, rest = m.groups()
            mapped = _block_name(rest, True)
            if mapped is not None:
                prefix = "visual." if tower == "visual" else ""
                out[f"{prefix}transformer.resblocks.{i}.{mapped}"] = value
                continue
        elif name in _RENAMES:
            out[_RENAMES[name]] = value
            continue
        elif name in _PROJ:
            out[_PROJ[name]] = value.t().contiguous()
            continue
        elif name in ("logit_scale", "logit_bias"):
            out[name] = value.reshape(())  # open_clip's default is a 0-dim parameter
            continue
        else:
            hit = next(((a, b) for a, b in _PREFIX if name.startswith(a)), None)
            if hit:
                out[hit[1] + name[len(hit[0]):]] = value
                continue
        raise CheckpointError(f"no open_clip name for tensor {name!r}")
    return out


def from_open_clip_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip CLIP state dict -> ours (logit_scale/bias reshaped to [1])."""
    back = {v: k for k, v in _RENAMES.items()}
    back_proj = {v: k for k, v in _PROJ.items()}
    back_prefix = [(b, a) for a, b in _PREFIX]
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if m := _THEIRS_BLOCK.match(name):
            vis, i, rest = m.groups()
            mapped = _block_name(rest, False)
            if mapped is not None:
                out[f"{'visual' if vis else 'text'}.blocks.{i}.{mapped}"] = value
                continue
        elif name in back:
            out[back[name]] = value
            continue
        elif name in back_proj:
            out[back_proj[name]] = value.t().contiguous()
            continue
        elif name in ("logit_scale", "logit_bias"):
            out[name] = value.reshape(1)
            continue
        elif name == "attn_mask":  # old open_clip checkpoints stored the causal mask
            continue
        else:
            hit = next(((a, b) for a, b in back_prefix if name.startswith(a)), None)
            if hit:
                out[hit[1] + name[len(hit[0]):]] = value
                continue
        raise CheckpointError(f"open_clip tensor {name!r} has no counterpart here (only plain ViT/text "
                              "CLIP checkpoints are supported)")
    return out


def infer_config(state: dict[str, torch.Tensor], **overrides: Any) -> ClipConfig:
    """Architecture from an open_clip state dict alone. Head counts and quick_gelu leave no trace in
    the tensors: heads are taken as width / 64 (open_clip's convention for its ViT configs and its
    OpenAI loader) and quick_gelu as False; pass ``overrides`` (or a config) when they differ."""
    try:
        width = state["visual.conv1.weight"].shape[0]
        patch = state["visual.conv1.weight"].shape[-1]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        text_width = state["ln_final.weight"].shape[0]
        count = lambda p: len({k[len(p):].split(".")[0] for k in state if k.startswith(p)})  # noqa: E731
        values = dict(
            embed_dim=state["text_projection"].shape[1], image_size=patch * grid, patch_size=patch,
            vision_width=width, vision_layers=count("visual.transformer.resblocks."),
            vision_mlp_ratio=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
            context_length=state["positional_embedding"].shape[0], vocab_size=state["token_embedding.weight"].shape[0],
            text_width=text_width, text_heads=max(1, text_width // 64), text_layers=count("transformer.resblocks."),
            text_mlp_ratio=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
            init_logit_bias=0.0 if "logit_bias" in state else None,
        )
    except KeyError as e:
        raise CheckpointError(f"not an open_clip ViT CLIP state dict (no {e.args[0]})") from None
    values.update(overrides)
    return ClipConfig(**values)


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(open_clip state dict, model_cfg from a folder's open_clip_config.json or None)."""
    from open_clip.factory import load_state_dict

    model_cfg = None
    if path.is_dir():
        config_file = path / "open_clip_config.json"
        if config_file.is_file():
            model_cfg = json.loads(config_file.read_text())["model_cfg"]
        files = [path / n for n in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
                 if (path / n).is_file()]
        if not files:
            raise CheckpointError(f"{path} holds no open_clip_model.safetensors / open_clip_pytorch_model.bin")
        path = files[0]
    if not path.is_file():
        raise CheckpointError(f"open_clip checkpoint not found: {path}")
    try:
        # weights_only: a .pt/.bin is read without running pickled code
        return load_state_dict(str(path), weights_only=True), model_cfg
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad checkpoint for the user
        raise CheckpointError(f"cannot read open_clip checkpoint {path}: {type(e).__name__}: {e}") from None


def load_open_clip_weights(model: torch.nn.Module, path: str | Path,
                           state: dict[str, torch.Tensor] | None = None) -> None:
    """Copy an open_clip checkpoint (or its already read ``state``) into a model of the same shape;
    task heads are left as they are."""
    require_vit_tower(model.cfg, "loading open_clip weights")
    if state is None:
        state, _ = _read_state(Path(path))
    ours = from_open_clip_state_dict(state)
    if model.logit_bias is not None and "logit_bias" not in ours:
        ours["logit_bias"] = model.logit_bias.detach().clone()  # a CLIP checkpoint into a SigLIP model
    try:
        missing, unexpected = model.load_state_dict(ours, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path} does not fit model: {str(e).splitlines()[-1].strip()}") from None
    missing = [k for k in missing if not k.startswith("heads.")]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit model: missing {missing[:4]}, unexpected {unexpected[:4]}")


def load_open_clip_checkpoint(path: str | Path, config: ClipConfig | str | None = None, **overrides: Any):
    """Our ClipModel from an open_clip checkpoint file or folder.

    config: a ClipConfig, an open_clip config name (``ViT-B-16``), or None: read the folder's
    ``open_clip_config.json``, else infer the shapes from the tensors.
    """
    from projects.clip_pseudo.config import named_config
    from projects.clip_pseudo.model import ClipModel

    state, model_cfg = _read_state(Path(path))
    if isinstance(config, str):
        config = named_config(config, **overrides)
    elif config is None:
        config = from_open_clip_cfg(model_cfg, **overrides) if model_cfg else infer_config(state, **overrides)
    model = ClipModel(config)
    load_open_clip_weights(model, path, state)
    return model


def save_open_clip(model: torch.nn.Module, cfg: ClipConfig, out_dir: str | Path, *,
                   mean: tuple[float, ...] = OPENAI_MEAN, std: tuple[float, ...] = OPENAI_STD,
                   interpolation: str = "bicubic", resize_mode: str = "shortest") -> list[Path]:
    """Write an open_clip folder (config + safetensors), plus heads.* when the model has heads."""
    from safetensors.torch import save_file

    require_vit_tower(cfg, "open_clip export")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    config = {"model_cfg": to_open_clip_cfg(cfg),
              "preprocess_cfg": {"size": cfg.image_size, "mean": list(mean), "std": list(std),
                                 "interpolation": interpolation, "resize_mode": resize_mode}}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_file(to_open_clip_state_dict(state), str(out / "open_clip_model.safetensors"), metadata={"format": "pt"})
    files = [out / "open_clip_config.json", out / "open_clip_model.safetensors"]
    heads = {k: v for k, v in state.items() if k.startswith("heads.")}
    if heads:
        save_file(heads, str(out / "heads.safetensors"), metadata={"format": "pt"})
        specs = [asdict(s) for s in getattr(model, "head_specs", [])]
        (out / "heads.json").write_text(json.dumps({"width": cfg.vision_width, "heads": specs}, indent=2))
        files += [out / "heads.safetensors", out / "heads.json"]
    return files


def load_heads(model: torch.nn.Module, folder: str | Path) -> None:
    """Attach and load the task heads saved beside an open_clip export (no-op without heads.json)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "heads.json").is_file():
        return
    specs = [HeadSpec(**s) for s in json.loads((folder / "heads.json").read_text())["heads"]]
    model.set_heads(specs)
    model.heads.load_state_dict({k.removeprefix("heads."): v for k, v in
                                 load_file(str(folder / "heads.safetensors")).items()})
