"""A CUDA device that CI's CPU-only machines can run: torch's fake tensors, plus a recorder of ops.

Inside :func:`stand_in_cuda`, tensors can live on ``cuda:0`` without a GPU (torch's
``FakeTensorMode``: shapes, dtypes and devices propagate, nothing is computed), and every op that
runs is recorded with the devices of its outputs. Mixing a CPU tensor of more than zero dims into a
CUDA op raises, as on a GPU; what a GPU would accept silently but pay for (a CPU tensor created
inside a task, a 0-dim CPU scalar added to a CUDA loss, a private CPU kernel) shows up in
``recorder.cpu_outputs`` / ``recorder.ops``. Fake tensors run forwards only (torch's autograd
engine needs a real device for backward).
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CUDA = torch.device("cuda", 0)
HOST_COLLECTIVES = {"host_sum", "gather_objects", "barrier"}
# Ops whose result the host needs before it can go on: a value (item) or a data-dependent size.
SYNC_OPS = {torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero, torch.ops.aten.masked_select,
            torch.ops.aten._unique2}


@dataclass
class OpRecorder(TorchDispatchMode):
    ops: list[str] = field(default_factory=list)
    # (op, shape, the innermost corefm/projects frame that called it) for every CPU tensor produced
    cpu_outputs: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    # (op, frame) for every op after which the host must wait for the device (a value or a count read back)
    host_syncs: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = str(func)
        self.ops.append(name)
        where = _caller()
        if where is None:  # made inside another package (segment_anything's relative positions): not ours
            return out
        if func.overloadpacket in SYNC_OPS:
            self.host_syncs.append((name, where))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self.cpu_outputs.append((name, tuple(t.shape), where))
        return out

    def clear(self) -> None:
        self.ops.clear()
        self.cpu_outputs.clear()
        self.host_syncs.clear()


def _caller() -> str | None:
    """The innermost calling frame outside torch, if it is corefm's or a project's device-side code
    (the data pipeline, corefm/data, works on the host by design); else None."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename
        if "/torch/" in path or path.endswith("stand_in_device.py"):
            continue
        if "site-packages" in path or "/corefm/data/" in path or "/corefm/" not in path and "/projects/" not in path:
            return None
        if path.endswith("corefm/train/comm.py") and frame.name in HOST_COLLECTIVES:
            return None  # host values for the gloo group: on the CPU by design
        return f"{path.split('/main/')[-1]}:{frame.lineno} {frame.line}"
    return None


@contextmanager
def stand_in_cuda() -> Iterator[OpRecorder]:
    """Run the block with fake CUDA tensors available; yields the op recorder (cleared on entry)."""
    recorder = OpRecorder()
    # shape_env: data-dependent shapes (boolean masks, nonzero) get symbolic sizes instead of failing.
    with FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv()), recorder:
        yield recorder


def to_stand_in(module: torch.nn.Module) -> torch.nn.Module:
    """Move a module's parameters and buffers to the stand-in CUDA device (call inside stand_in_cuda)."""
    return module.to(CUDA)


def check_task_on_cuda(task: torch.nn.Module, batch: dict, dtype: torch.dtype = torch.float32,
                       modes: tuple[str, ...] = ("train", "eval")) -> dict[str, dict]:
    """Run ``task`` on the stand-in CUDA device with ``batch`` moved there by the trainer's seam, in each
    mode; fail on any CPU tensor the task makes or returns, any oneDNN (CPU-only) op, and any host
    sync in the training forward. Returns the outputs per mode (fake tensors: shapes, dtypes and
    devices only)."""
    from corefm.train.placement import Placement

    placement = Placement(CUDA, "nccl")
    outs = {}
    with stand_in_cuda() as rec:
        task.to(CUDA, dtype)  # a bf16 engine holds the module in bf16, as DeepSpeed does
        task.place(CUDA)  # what the trainer calls once the engine holds the task
        moved = placement.move(batch, dtype)
        syncs = {}
        for mode in modes:
            rec.clear()
            outs[mode] = task(moved, mode=mode)
            syncs[mode], cpu_made = list(rec.host_syncs), list(rec.cpu_outputs)
            made = "\n".join(f"  {op} {shape} at {where}" for op, shape, where in cpu_made)
            assert not cpu_made, f"the task made CPU tensors on a CUDA run ({mode}):\n{made}"
            assert not [op for op in rec.ops if "mkldnn" in op], "a oneDNN (CPU-only) op ran on CUDA"
    for mode, out in outs.items():
        off = {k: v.device for k, v in out.items() if not torch.is_tensor(v) or v.device != CUDA}
        assert not off, f"{mode} outputs not on {CUDA}: {off}"
    # A training forward that reads a value or a data-dependent size back stalls the GPU every step.
    waits = "\n".join(f"  {op} at {where}" for op, where in syncs.get("train", []))
    assert not syncs.get("train"), f"the training forward waits for the device:\n{waits}"
    return outs
