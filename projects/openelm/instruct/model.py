"""Recipe model ``openelm_finetune``: an OpenELM loaded from a release folder (or Hub id), with LoRA
adapters from ``peft`` (or all weights trainable), that runs packed rows with per-example masks.

LoRA (Hu et al., arXiv 2106.09685): every targeted linear layer W (out x in) gets
``W x + (alpha / r) * B A x`` with A (r x in) random, B (out x r) zero, so training starts from
the base model exactly; only A and B are trained. Targets are OpenELM's four projections in every
layer (``qkv_proj``, ``out_proj`` of attention, ``proj_1``, ``proj_2`` of the FFN), named as in
both corefm's and Apple's module trees, so the adapter applies to the Hugging Face model unchanged
(:mod:`projects.openelm.instruct.release`). The tied embedding / output matrix and the norms stay
frozen. The adapters are injected with ``peft.inject_adapter_in_model`` into corefm's own OpenELM
(its layers are ``nn.Linear`` subclasses), which keeps corefm's CPU kernels for the frozen parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from corefm.errors import ConfigError
from corefm.registry import register_model
from projects.openelm.convert import HUB_ID
from projects.openelm.instruct.packing import segment_mask, segment_positions

LORA_TARGETS = ("qkv_proj", "out_proj", "proj_1", "proj_2")
ADAPTER_NAME = "default"


@dataclass
class FinetuneConfig:
    # The model to start from: an OpenELM folder in Apple's / corefm's HF layout (a `corefm release`
    # folder), or a Hub id org/name, read by projects.openelm.convert.load_hf.
    base: str = ""
    # "lora": train adapters only; "full": train every weight.
    method: Literal["lora", "full"] = "lora"
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if not self.base:
            raise ConfigError("model.base: name the OpenELM to fine-tune (a release folder or a Hub id org/name)")
        if self.lora_r < 1:
            raise ConfigError(f"model.lora_r must be positive, got {self.lora_r}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"model.lora_alpha must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"model.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if unknown or not self.lora_targets:
            raise ConfigError(f"model.lora_targets: {unknown or 'none given'}; choose from {', '.join(LORA_TARGETS)}")


def lora_config(cfg: FinetuneConfig, base_name: str | None = None):
    """The peft LoraConfig of a recipe (``task_type`` CAUSAL_LM, so the saved adapter loads with
    ``AutoPeftModelForCausalLM`` too)."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), bias="none", task_type="CAUSAL_LM",
                      base_model_name_or_path=base_name)


def add_lora(lm: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Freeze ``lm`` and inject LoRA adapters (in place); returns ``lm``."""
    from peft import inject_adapter_in_model

    for p in lm.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(lora_config(cfg), lm, adapter_name=ADAPTER_NAME)
    trainable = [n for n, p in lm.named_parameters() if p.requires_grad]
    if not trainable or any(".lora_" not in n for n in trainable):
        raise ConfigError(f"LoRA injection left {len(trainable)} trainable tensors outside the adapters")
    return lm


class FinetunedOpenELM(nn.Module):
    """``lm``: corefm's OpenELM (with LoRA layers when method is lora). input_ids (B, T) -> logits (B, T, V);
    with ``segments`` (B, T) each packed example attends and is positioned as if it were alone."""

    def __init__(self, lm: nn.Module, cfg: FinetuneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lm = lm
        self.vocab_size = lm.vocab_size
        lm.gradient_checkpointing = cfg.activation_checkpointing
        if cfg.method == "lora":
            add_lora(lm, cfg)

    def forward_hidden(self, input_ids: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        return packed_hidden(self.lm, input_ids, segments, checkpointing=self.lm.gradient_checkpointing and self.training)

    def forward(self, input_ids: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm.logits(self.forward_hidden(input_ids, segments))


def packed_hidden(lm: nn.Module, input_ids: torch.Tensor, segments: torch.Tensor | None = None,
                  checkpointing: bool = False) -> torch.Tensor:
    """corefm's ``DecoderLM.forward_hidden`` over packed rows: input_ids, segments (B, T) -> (B, T, dim).

    The blocks get the block-diagonal mask as ``attn_mask`` (ANDed with their own causal mask) and
    per-segment (B, T) positions for RoPE; without segments this is the plain causal forward."""
    if segments is None:
        return lm.forward_hidden(input_ids)
    if segments.shape != input_ids.shape:
        raise ValueError(f"segments {tuple(segments.shape)} must have input_ids' shape {tuple(input_ids.shape)}")
    mask, positions = segment_mask(segments), segment_positions(segments)
    x = lm.token_embeddings(input_ids)
    for layer in lm.layers:
        if checkpointing:
            x = checkpoint(layer, x, use_reentrant=False, attn_mask=mask, positions=positions)
        else:
            x = layer(x, attn_mask=mask, positions=positions)
    return lm.norm(x)


def packed_logits(lm: nn.Module, input_ids: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, T, V) of a plain corefm OpenELM over packed rows (see :func:`packed_hidden`)."""
    return lm.logits(packed_hidden(lm, input_ids, segments))


def check_base(base: str) -> None:
    """One line for a ``model.base`` that is neither an OpenELM folder nor a Hub id."""
    path = Path(base)
    if not path.is_dir() and not (HUB_ID.fullmatch(base) and not path.exists()):
        raise ConfigError(f"model.base: {base} is not a folder (nor a Hub id org/name); "
                          "run projects/openelm/demo.sh for a base release, or point it at one")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"model.base: {base} has no config.json (not an OpenELM release folder)")


def load_base(base: str, dtype: torch.dtype = torch.float32):
    """(corefm OpenELM, its OpenELMConfig) of a release folder or Hub id, through ``load_hf``."""
    from projects.openelm.convert import load_hf

    return load_hf(base, dtype=dtype)


@register_model("openelm_finetune", FinetuneConfig)
def build_openelm_finetune(cfg: FinetuneConfig) -> FinetunedOpenELM:
    # Checked here, when the model is built, not when the recipe is read: a recipe parses on any
    # machine, whether or not its base has been made or downloaded there yet.
    check_base(cfg.base)
    lm, _ = load_base(cfg.base)
    return FinetunedOpenELM(lm, cfg)
