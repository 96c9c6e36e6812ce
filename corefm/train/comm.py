"""The trainer's own collectives, each on the device its process group needs.

Two kinds of values cross ranks. Device tensors (loss sums, token counts, eval sums, the
non-finite flag) go through the main group on its communication device (the GPU under NCCL) and
never wait for the host. Host scalars that the host already knows (a stop signal, whether a rank
still has an eval batch, a measured peak, a list of metric names) go through a small gloo group,
so they never become a host-to-device copy followed by a sync. On a CPU run the main group is gloo
and serves both.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from corefm.train.placement import Placement


class Comm:
    def __init__(self, device: torch.device, host_group: Any = None) -> None:
        self.device = torch.device(device)  # the main group's communication device
        self.host_group = host_group  # a gloo group for host values; None: the main group (gloo itself)
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1

    @classmethod
    def for_placement(cls, placement: Placement) -> "Comm":
        """Collective when the process group is up: every rank calls it (it may create the gloo group)."""
        host_group = None
        if dist.is_available() and dist.is_initialized() and placement.comm_device.type != "cpu":
            host_group = dist.new_group(backend="gloo")
        return cls(placement.comm_device, host_group)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) ``tensor`` in place over ranks; it must live on the communication device."""
        if tensor.device != self.device:
            raise RuntimeError(f"a collective was handed a tensor on {tensor.device}; "
                               f"this process group communicates on {self.device}")
        if self.active:
            dist.all_reduce(tensor)
        return tensor

    def average_buffers_(self, module: torch.nn.Module) -> None:
        """Average ``module``'s floating-point buffers over ranks, in place (BatchNorm's running
        statistics). DeepSpeed, unlike DDP, never syncs buffers, so each rank's statistics follow its
        own batches; averaged before every evaluation and checkpoint, the evaluated, saved and exported
        statistics are one set, and a resumed run starts from the same one on every rank."""
        if not self.active or self.world == 1:
            return
        for buf in module.buffers():
            if buf.is_floating_point():
                total = self.sum_(buf.detach().to(self.device, torch.float32))
                buf.copy_(total / self.world)

    def host_sum(self, values: list[float]) -> list[float]:
        """Sum a few host floats over ranks (float64, through the gloo group)."""
        t = torch.tensor(values, dtype=torch.float64)
        if self.active:
            dist.all_reduce(t, group=self.host_group)
        return t.tolist()

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.host_group)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=self.host_group)
