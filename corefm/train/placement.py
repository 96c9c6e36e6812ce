"""Where one rank computes: its device, chosen once from ``LOCAL_RANK``, and the one place batches move there.

On a GPU node each process drives the GPU its ``LOCAL_RANK`` names (DeepSpeed's accelerator sets
it as the current device before the process group and the engine exist, so NCCL and DeepSpeed see
the same one); on a CPU-only machine every rank computes on the CPU and talks over gloo.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Placement:
    device: torch.device  # model, batches, losses and metric accumulators
    backend: str  # the main process group's backend: "nccl" on GPUs, "gloo" on CPUs

    @property
    def comm_device(self) -> torch.device:
        """Where tensors handed to the main process group must live (gloo: the CPU; nccl: the GPU)."""
        return torch.device("cpu") if self.backend == "gloo" or self.device.type == "cpu" else self.device

    @property
    def pin_memory(self) -> bool:
        """Page-locked host batches, so the copy to the GPU can overlap compute (``non_blocking``)."""
        return self.device.type == "cuda"

    def move(self, batch: Any, dtype: torch.dtype) -> Any:
        """Every tensor of a (nested dict/list/tuple) batch on this device; floating ones in ``dtype``.

        Copies from pinned memory are asynchronous: the GPU stream orders them before the compute
        that reads them, and the host does not wait.
        """
        if torch.is_tensor(batch):
            target = dtype if batch.is_floating_point() else batch.dtype
            return batch.to(self.device, dtype=target, non_blocking=True)
        if isinstance(batch, Mapping):
            return {k: self.move(v, dtype) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.move(v, dtype) for v in batch)
        return batch


def rank_placement(accelerator: Any = None, env: Mapping[str, str] = os.environ) -> Placement:
    """This process's placement from ``LOCAL_RANK`` through DeepSpeed's accelerator; on a GPU it also
    makes that GPU the current device (call before the process group and the engine are built)."""
    if accelerator is None:
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
    backend = accelerator.communication_backend_name()
    if accelerator.device_name() == "cpu":
        return Placement(torch.device("cpu"), backend)
    local_rank = int(env.get("LOCAL_RANK", "0"))
    accelerator.set_device(local_rank)
    return Placement(torch.device(accelerator.device_name(local_rank)), backend)
