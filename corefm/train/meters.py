"""Throughput and MFU: model FLOPs counted once with torch's FlopCounterMode, peak measured here.

Peak FLOP/s is measured at start-up with a square matmul in the training dtype on each rank's own
device (its GPU, or the CPU cores it shares with the other ranks of its machine, all measuring at
once as they train at once) and summed over ranks. Nothing is hard-coded: machines differ, a CPU
with AMX runs bf16 several times faster, and a GPU's sustained rate is below its datasheet's.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, TypeVar

import torch
from torch.utils.flop_counter import FlopCounterMode

from corefm.train.comm import Comm

T = TypeVar("T")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(dtype: torch.dtype, n: int | None = None, seconds: float = 0.5,
                        device: torch.device | str = "cpu") -> float:
    """Sustained FLOP/s of an ``n x n`` matmul in ``dtype`` on ``device`` (default n: 1024 on a CPU,
    8192 on an accelerator, large enough to run at the tensor cores' rate)."""
    device = torch.device(device)
    n = n or (1024 if device.type == "cpu" else 8192)
    # A generator of its own: measuring must not move the global RNG (a resumed run measures again).
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, generator=gen).to(dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    _synchronize(device)
    iters, start = 0, time.perf_counter()
    while True:
        a @ b
        iters += 1
        if device.type != "cpu" and iters % 10:
            continue  # queue products between syncs: a sync per product would time the launch gap
        _synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * n**3 * iters / elapsed


def cluster_peak(dtype: torch.dtype, comm: Comm, device: torch.device) -> float:
    """Sum over ranks of each rank's matmul peak on its own device (all ranks measure at once, so
    ranks sharing a machine's cores share them as they do in training)."""
    comm.barrier()
    return comm.host_sum([measure_matmul_peak(dtype, device=device)])[0]


def _attention_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """QK^T and AV of one fused SDPA call, query (B, Hq, Tq, Dk), key (B, Hkv, Tk, Dk), value
    (B, Hkv, Tk, Dv): 2*B*Hq*Tq*Tk*(Dk + Dv). Grouped-query calls (Hkv < Hq) cost as many FLOPs as
    if K and V were repeated to Hq heads."""
    b, h, tq, dk = q_shape
    return 2 * b * h * tq * k_shape[-2] * (dk + v_shape[-1])


# torch's counter counts the CPU kernel as zero, and before torch 2.14 it refuses the CUDA kernels'
# grouped-query calls (OpenELM's) with an AssertionError; one formula for all of them.
ATTENTION_FLOPS = {op: _attention_flops for op in (
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
    torch.ops.aten._scaled_dot_product_flash_attention,
    torch.ops.aten._scaled_dot_product_efficient_attention,
    torch.ops.aten._scaled_dot_product_cudnn_attention,
)}


def count_flops(fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()``'s result and its FLOPs (matmuls, convolutions and attention, CPU kernels included)."""
    counter = FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS)
    with counter:
        result = fn()
    return result, int(counter.get_total_flops())


class Throughput:
    """Window averages of samples/s, tokens/s and MFU between log lines."""

    def __init__(self, peak_flops: float):
        self.peak_flops = peak_flops
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.excluded = 0.0
        self.samples = self.tokens = self.flops = 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside (evaluation, checkpointing) does not count against training speed."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t0

    def update(self, samples: float, tokens: float, flops: float) -> None:
        self.samples += samples
        self.tokens += tokens
        self.flops += flops

    def read(self, tokens: float = 0.0) -> dict[str, float]:
        """Rates since the last reset; ``tokens`` adds tokens counted elsewhere (on the device)."""
        dt = max(time.perf_counter() - self.start - self.excluded, 1e-9)
        out = {"samples_per_s": self.samples / dt}
        if self.tokens + tokens:
            out["tokens_per_s"] = (self.tokens + tokens) / dt
        if self.flops and self.peak_flops:
            out["mfu"] = self.flops / dt / self.peak_flops
        return out
