"""Atomic, resumable checkpoints around DeepSpeed's own format.

Layout of ``<run_dir>/checkpoints``::

    step_00000200/          one complete checkpoint
      ds/                   DeepSpeed's tag folder (model, optimizer and scheduler shards)
      rank_00000.pt         per rank: data position, RNG states
      meta.json             step, world size, resolved recipe
      latest                text "ds": DeepSpeed's tag file, for its zero_to_fp32.py beside it
      ds_universal/         written on the first resume at another world size: DeepSpeed's
                            universal checkpoint of ds/ (ds_to_universal), loadable at any size
    latest                  text: the folder name of the newest complete checkpoint

A checkpoint is written into ``.tmp-step_...`` and renamed once every rank has finished, and
``latest`` is replaced last, so a kill at any moment leaves the previous checkpoint intact.
Assumes a file system shared by all nodes (as DeepSpeed's own checkpointing does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from corefm.data.errors import one_line
from corefm.errors import CheckpointError

TAG = "ds"
UNIVERSAL_TAG = "ds_universal"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Python, numpy and torch's CPU generator, plus the generator of ``device`` when it is a GPU."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> str:
    """Restore :func:`rng_state`'s output. Returns a warning (else "") when the checkpoint and this run
    are on different kinds of device: the GPU generator's stream then cannot continue, so the resumed
    run is not bit-exact."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    on_cuda = device is not None and device.type == "cuda"
    if on_cuda and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    if ("cuda" in state) != on_cuda:
        return (f"the checkpoint was written on {'a GPU' if 'cuda' in state else 'CPUs'} and this run is on "
                f"{'a GPU' if on_cuda else 'CPUs'}: its GPU random stream cannot continue, so this resume is not exact")
    return ""


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint folder, or None when there is none."""
    marker = ckpt_root / "latest"
    if not marker.is_file():
        return None
    path = ckpt_root / marker.read_text().strip()
    if not (path / "meta.json").is_file():
        raise CheckpointError(f"{marker} points to {path.name}, which is missing or incomplete")
    return path


def clean_partial(ckpt_root: Path) -> None:
    """Remove ``.tmp-*`` folders left by a run killed while saving (rank 0 only)."""
    for tmp in ckpt_root.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def save(engine, ckpt_root: Path, step: int, rank_state: dict[str, Any], meta: dict[str, Any],
         keep_last: int, device: torch.device | None = None,
         tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Collective: every rank calls this. Returns the final checkpoint folder.

    ``tensors``: file name -> state dict, written by rank 0 as safetensors into the checkpoint (the
    weight EMA's ``ema.safetensors``)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    name = f"step_{step:08d}"
    final, tmp = ckpt_root / name, ckpt_root / f".tmp-{name}"
    try:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        engine.save_checkpoint(str(tmp), tag=TAG, save_latest=False)
        torch.save({**rank_state, "rng": rng_state(device)}, tmp / f"rank_{rank:05d}.pt")
        _barrier()
        if rank == 0:
            for file_name, state in (tensors or {}).items():
                save_file(untied(state), str(tmp / file_name))
            write_text_atomic(tmp / "meta.json", json.dumps(meta, indent=2))
            # DeepSpeed's own tools (the zero_to_fp32.py it copies here, run as `python zero_to_fp32.py
            # . OUT`) find the tag folder through this file
            write_text_atomic(tmp / "latest", TAG)
            if final.exists():  # the same step saved again (e.g. SIGTERM right after a periodic save)
                shutil.rmtree(final)
            os.rename(tmp, final)
            write_text_atomic(ckpt_root / "latest", name)
    except OSError as e:  # disk full, quota, permissions: the previous checkpoint is untouched
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = latest_checkpoint(ckpt_root)
        raise CheckpointError(f"writing checkpoint {name} failed: {e.strerror or e}"
                              + (f" ({e.filename})" if e.filename else "")
                              + f"; {'the previous checkpoint ' + kept.name + ' is intact' if kept else 'no earlier checkpoint'}"
                              ) from None
    if rank == 0:
        complete = sorted(p for p in ckpt_root.glob("step_*") if (p / "meta.json").is_file())
        for old in complete[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share storage (tied weights): each name gets its own copy."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        v = v.detach().contiguous()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _damaged(path: Path) -> str:
    return (f"; it may be damaged: delete it and write the name of an earlier step_ folder into "
            f"{path.parent / 'latest'}, or start a new run_dir")


def _read_rank_file(path: Path, rank: int) -> dict[str, Any]:
    rank_file = path / f"rank_{rank:05d}.pt"
    if not rank_file.is_file():
        raise CheckpointError(f"{rank_file} is missing" + _damaged(path))
    try:
        # Our own file (data position, RNG tuples): it holds non-tensor objects, hence weights_only=False.
        state = torch.load(rank_file, weights_only=False)
        state["rng"]
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{rank_file} cannot be read ({type(e).__name__}: {one_line(e)[:200]})"
                              + _damaged(path)) from None
    return state


def convert_to_universal(path: Path, workers: int = 1) -> Path:
    """DeepSpeed's universal checkpoint of ``path/ds`` in ``path/ds_universal`` (made once, atomically,
    by DeepSpeed's own ``ds_to_universal``; its progress prints go to ``ds_universal.log``). Rank 0 only."""
    out = path / UNIVERSAL_TAG
    if out.is_dir():
        return out
    tmp = path / f".tmp-{UNIVERSAL_TAG}"
    shutil.rmtree(tmp, ignore_errors=True)
    from deepspeed.checkpoint import ds_to_universal

    # inject_missing_state: the version record ds_to_universal wants is written only by Megatron's
    # DeepSpeed integration; corefm's parameters are plain data-parallel (no TP/PP slices to describe)
    args = argparse.Namespace(input_folder=str(path / TAG), output_folder=str(tmp), num_extract_workers=workers,
                              num_merge_workers=workers, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)
    try:
        with open(path / f"{UNIVERSAL_TAG}.log", "w") as log_file, contextlib.redirect_stdout(log_file):
            ds_to_universal.main(args)
    except Exception as e:  # noqa: BLE001 - DeepSpeed's converter raises assertions and ValueErrors alike
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"DeepSpeed's ds_to_universal could not convert {path / TAG} "
                              f"({type(e).__name__}: {one_line(e)[:200]}); see {path / (UNIVERSAL_TAG + '.log')}"
                              ) from None
    os.rename(tmp, out)
    return out


def load(engine, path: Path, world_size: int, device: torch.device | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Collective: restore engine, RNG and this rank's state. Returns ``(meta, rank_state)``; a warning
    about the RNG (see :func:`set_rng_state`) is in ``rank_state["rng_warning"]``.

    At another world size than the checkpoint's (an engine built with :func:`universal_config`), rank 0
    first converts it to DeepSpeed's universal checkpoint, which every rank then loads its own
    partition of; ``rank_state["data_world"]`` then holds every old rank's data state (for the loader
    to remap), and the RNG is left to the caller: old ranks' streams cannot continue on new ranks."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    meta = read_meta(path)
    elastic = meta["world_size"] != world_size
    if elastic and not engine.load_universal_checkpoint():
        raise CheckpointError(f"{path} was written by {meta['world_size']} ranks but this run has {world_size}, "
                              "and the engine was not built to load a universal checkpoint")
    tag = TAG
    if elastic:
        if rank == 0:
            convert_to_universal(path)
        _barrier()
        tag = UNIVERSAL_TAG
        if not (path / tag).is_dir():  # rank 0 failed; its own error is the one reported
            raise CheckpointError(f"{path / tag} was not written")
    try:
        load_path, _ = engine.load_checkpoint(str(path), tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
    except Exception as e:  # noqa: BLE001 - truncated or garbled files surface as many error types
        raise CheckpointError(f"DeepSpeed could not load {path / tag} ({type(e).__name__}: {one_line(e)[:200]})"
                              + _damaged(path)) from None
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load {path / tag}" + _damaged(path))
    if elastic:
        world = [_read_rank_file(path, r) for r in range(meta["world_size"])]
        state = {k: v for k, v in world[0].items() if k not in ("rng", "data")}
        state["data_world"] = [s["data"] for s in world]
        state["rng_warning"] = ""
        return meta, state
    state = _read_rank_file(path, rank)
    state["rng_warning"] = set_rng_state(state.pop("rng"), device)
    return meta, state


def universal_config(ds_config: dict[str, Any]) -> dict[str, Any]:
    """``ds_config`` for an engine that loads a universal checkpoint (DeepSpeed reads this at build)."""
    return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's meta.json (step, world size, recipe, training metrics)."""
    try:
        return json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / 'meta.json'} cannot be read ({e}); the checkpoint may be damaged") from None
