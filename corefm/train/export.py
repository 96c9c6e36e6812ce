"""Consolidate a DeepSpeed checkpoint (any ZeRO stage, fp32 or bf16) into one fp32 safetensors file."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from corefm.errors import CheckpointError
from corefm.train.checkpoint import TAG, untied


def fp32_state_dict(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """The task's full state dict in fp32, from the ZeRO shards (or the plain module file at ZeRO-0)."""
    tag_dir = ckpt_dir / TAG
    if not tag_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir} holds no DeepSpeed checkpoint (no {TAG}/ folder)")
    if any(tag_dir.glob("*zero_pp_rank_*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # It prints a report and a progress bar per file; failures still raise.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=TAG)
        # ZeRO-1 records no frozen parameters beside the optimizer's partitions (DeepSpeed saves them
        # only when it partitions gradients), so the consolidation drops them; they never change, and
        # the module file of ZeRO 1/2 holds every parameter whole.
        module_file = tag_dir / "mp_rank_00_model_states.pt"
        if module_file.is_file():
            module = torch.load(module_file, map_location="cpu", weights_only=False)["module"]
            state.update({k: v for k, v in module.items() if k not in state and v.numel()})
    else:
        model_file = tag_dir / "mp_rank_00_model_states.pt"
        if not model_file.is_file():
            raise CheckpointError(f"{model_file} is missing")
        # DeepSpeed's own checkpoint file (written by this run): it pickles more than tensors.
        state = torch.load(model_file, map_location="cpu", weights_only=False)["module"]
    return {k: v.float() for k, v in state.items()}


def save_safetensors_atomic(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write via a temporary file and rename; tied tensors are cloned (safetensors refuses shared storage)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(untied(state), str(tmp), metadata=metadata or {})
    os.replace(tmp, path)
    return path


def export_checkpoint(ckpt_dir: Path, task: torch.nn.Module, out: Path | None = None) -> Path:
    """Write ``<ckpt_dir>/model.safetensors`` (model weights, names from ``task.export_state_dict``)."""
    state = task.export_state_dict(fp32_state_dict(ckpt_dir))
    return save_safetensors_atomic(state, out or ckpt_dir / "model.safetensors", {"format": "pt"})


def export_ema(ckpt_dir: Path, task: torch.nn.Module, out: Path | None = None) -> Path:
    """Write the checkpoint's weight EMA (``ema.safetensors``, see corefm.train.ema) as model weights,
    named as ``model.safetensors`` is (``<ckpt_dir>/model_ema.safetensors`` by default)."""
    from safetensors.torch import load_file

    from corefm.train.ema import FILE

    source = ckpt_dir / FILE
    if not source.is_file():
        raise CheckpointError(f"{ckpt_dir} holds no weight EMA ({FILE}): the run had no ema.momentum")
    state = task.export_state_dict({k: v.float() for k, v in load_file(str(source)).items()})
    return save_safetensors_atomic(state, out or ckpt_dir / "model_ema.safetensors", {"format": "pt", "weights": "ema"})
