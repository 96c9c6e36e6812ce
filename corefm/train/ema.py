"""Weight EMA (CoreNet's ``--ema``): ``ema = (1 - momentum) * ema + momentum * weight`` after every
optimizer step, evaluated beside the raw weights, saved in checkpoints and exported on its own.

Where the copy lives: in fp32, on every rank, **sharded like the model**. At ZeRO 0/1/2 the module's
weights are whole on every rank, so each rank keeps the whole EMA (the ranks' copies are equal). At
ZeRO-3 a rank keeps the EMA of its own partition of each parameter (``p.ds_tensor``), so the EMA costs
4 bytes per parameter / world, like the model's own shards (a parameter ZeRO-3 keeps gathered between
steps, below ``stage3_param_persistence_threshold``, is averaged by partition too). Floating-point buffers (BatchNorm's running statistics) are averaged too, as CoreNet does;
integer buffers are taken as they are.

The EMA follows the module's copy (bf16 in bf16 runs), not DeepSpeed's fp32 master; the average
itself is kept and updated in fp32. It starts from the initial weights with no warm-up (CoreNet has
none), so after n steps they still weigh (1 - momentum)^n in it: negligible over CoreNet's ImageNet
runs at 1e-4, ruinous in a short one (BatchNorm's initial variance 1 beside trained variances far
below it); the trainer warns when more than 1% remains at the last step.

A checkpoint holds the whole EMA as ``ema.safetensors`` (gathered to rank 0 when it is saved), with the
task's state-dict names, so it loads back at any world size and ZeRO stage (each rank takes its slice)
and exports through the task's own ``export_state_dict``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from corefm.errors import CheckpointError

FILE = "ema.safetensors"


class _Entry:
    """One tensor of the task's state dict: where its local values live and their EMA."""

    def __init__(self, names: list[str], tensor: torch.Tensor, sharded: bool) -> None:
        self.names = names  # every state-dict name of this tensor (tied weights have several)
        self.tensor = tensor  # the module's parameter or buffer
        self.sharded = sharded  # ZeRO-3 partition: the local values are tensor.ds_tensor
        self.floating = tensor.is_floating_point()
        self.ema = self.local().detach().float().clone() if self.floating else None

    def local(self) -> torch.Tensor:
        return self.tensor.ds_tensor if self.sharded else self.tensor.data

    @property
    def full_shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.ds_shape) if self.sharded else tuple(self.tensor.shape)


class WeightEma:
    """The EMA of a module's weights (see the module docstring). ``momentum`` in (0, 1): the weight of
    the newest step (CoreNet's convention; 1e-4 gives an average over ~10k steps)."""

    def __init__(self, module: torch.nn.Module, momentum: float) -> None:
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"EMA momentum must be in (0, 1), got {momentum}")
        self.momentum = momentum
        self.entries: list[_Entry] = []
        seen: dict[int, _Entry] = {}
        for name, tensor in module.state_dict(keep_vars=True).items():
            if id(tensor) in seen:  # a tied weight: one average, every name
                seen[id(tensor)].names.append(name)
                continue
            entry = _Entry([name], tensor, sharded=hasattr(tensor, "ds_tensor"))
            seen[id(tensor)] = entry
            self.entries.append(entry)

    @torch.no_grad()
    def update(self) -> None:
        """After an optimizer step, on every rank (local work only, no collective)."""
        for e in self.entries:
            if e.floating:
                e.ema.lerp_(e.local().float(), self.momentum)

    # --- evaluation ----------------------------------------------------------------------------
    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """Collective: within the block the module computes with the EMA weights; the raw ones come
        back after, bit for bit.

        At ZeRO-3 a parameter is also whole on a rank while it is gathered, and forwards under no_grad
        (evaluations) leave parameters gathered; such a copy is used as it is, so it is rewritten from
        the swapped partitions on the way in and on the way out (the ranks gather the same parameters,
        so they agree on which)."""
        saved = []
        for e in self.entries:
            if e.floating:
                local = e.local()
                saved.append((local, local.clone()))
                local.copy_(e.ema)
        self._refresh_gathered()
        try:
            yield
        finally:
            for local, values in saved:
                local.copy_(values)
            self._refresh_gathered()

    def _refresh_gathered(self) -> None:
        for e in self.entries:
            if e.sharded and e.tensor.data.numel():
                e.tensor.data.copy_(self._whole(e.tensor.ds_tensor, e.full_shape))

    # --- checkpoints ---------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Collective: the whole EMA (fp32, CPU, every state-dict name) on rank 0; {} on other ranks."""
        rank = dist.get_rank() if dist.is_initialized() else 0
        out: dict[str, torch.Tensor] = {}
        for e in self.entries:
            value = self._gathered(e) if e.floating else e.local().detach().clone()
            if rank == 0:
                value = value.cpu()
                for name in e.names:
                    out[name] = value
        return out

    def _gathered(self, e: _Entry) -> torch.Tensor:
        return self._whole(e.ema, e.full_shape) if e.sharded else e.ema.detach().clone()

    @staticmethod
    def _whole(part: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Collective: a ZeRO-3 tensor of ``shape`` from every rank's flat partition ``part``."""
        parts = [torch.empty_like(part) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, part.contiguous())
        return torch.cat(parts)[: torch.Size(shape).numel()].view(shape)

    @torch.no_grad()
    def load_full_state_dict(self, state: dict[str, torch.Tensor], source: str = "the EMA state") -> None:
        """Every rank: take this rank's part of a whole EMA (``full_state_dict``'s, any world size)."""
        rank = dist.get_rank() if dist.is_initialized() else 0
        missing = [e.names[0] for e in self.entries if e.floating and e.names[0] not in state]
        if missing:
            raise CheckpointError(f"{source} does not match the model: no {', '.join(missing[:3])}")
        for e in self.entries:
            if not e.floating:
                continue
            value = state[e.names[0]].to(e.ema.device, torch.float32)
            if tuple(value.shape) != e.full_shape:
                raise CheckpointError(f"{source}: {e.names[0]} is {tuple(value.shape)}, the model's is {e.full_shape}")
            if e.sharded:
                n = e.ema.numel()
                flat = value.reshape(-1)[rank * n:(rank + 1) * n]
                e.ema.zero_()  # ZeRO-3 pads the last rank's partition
                e.ema[: flat.numel()].copy_(flat)
            else:
                e.ema.copy_(value)

    def load(self, ckpt_dir: Path) -> None:
        """Every rank: the EMA saved in checkpoint folder ``ckpt_dir``."""
        path = ckpt_dir / FILE
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the run has ema.momentum set but this checkpoint "
                                  "holds no EMA (it may be damaged)")
        self.load_full_state_dict(load_file(str(path)), str(path))
