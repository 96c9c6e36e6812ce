"""Atomic, resumable checkpoints around DeepSpeed's own format.

Layout of ``<run_dir>/checkpoints``::

    step_00000200/          one complete checkpoint
      ds/                   DeepSpeed's tag folder (model, optimizer and scheduler shards)
      rank_00000.pt         per rank: data position, RNG states
      meta.json             step, world size, resolved recipe
      latest                text "ds": DeepSpeed's tag file, for its zero_to_fp32.py beside it
    latest                  text: the folder name of the newest complete checkpoint

A checkpoint is written into ``.tmp-step_...`` and renamed once every rank has finished, and
``latest`` is replaced last, so a kill at any moment leaves the previous checkpoint intact.
Assumes a file system shared by all nodes (as DeepSpeed's own checkpointing does).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from corefm.data.errors import one_line
from corefm.errors import CheckpointError

TAG = "ds"


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
         keep_last: int, device: torch.device | None = None) -> Path:
    """Collective: every rank calls this. Returns the final checkpoint folder."""
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
        complete = sorted(p for p in ckpt_root.glob("step_*") if (p / "meta.json").is_file())
        for old in complete[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load(engine, path: Path, world_size: int, device: torch.device | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Collective: restore engine, RNG and this rank's state. Returns ``(meta, rank_state)``; a warning
    about the RNG (see :func:`set_rng_state`) is in ``rank_state["rng_warning"]``."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    meta = read_meta(path)
    if meta["world_size"] != world_size:
        raise CheckpointError(
            f"{path} was written by {meta['world_size']} ranks but this run has {world_size}; "
            "exact data resume needs the same number of ranks (start a new run_dir to change it)")
    damaged = (f"; it may be damaged: delete it and write the name of an earlier step_ folder into "
               f"{path.parent / 'latest'}, or start a new run_dir")
    try:
        load_path, _ = engine.load_checkpoint(str(path), tag=TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
    except Exception as e:  # noqa: BLE001 - truncated or garbled files surface as many error types
        raise CheckpointError(f"DeepSpeed could not load {path / TAG} ({type(e).__name__}: {one_line(e)[:200]})"
                              + damaged) from None
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load {path / TAG}" + damaged)
    rank_file = path / f"rank_{rank:05d}.pt"
    if not rank_file.is_file():
        raise CheckpointError(f"{rank_file} is missing" + damaged)
    try:
        # Our own file (data position, RNG tuples): it holds non-tensor objects, hence weights_only=False.
        state = torch.load(rank_file, weights_only=False)
        rng = state.pop("rng")
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{rank_file} cannot be read ({type(e).__name__}: {one_line(e)[:200]})" + damaged) from None
    state["rng_warning"] = set_rng_state(rng, device)
    return meta, state


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's meta.json (step, world size, recipe, training metrics)."""
    try:
        return json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / 'meta.json'} cannot be read ({e}); the checkpoint may be damaged") from None
