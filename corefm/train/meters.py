"""Throughput and MFU: model FLOPs counted once with torch's FlopCounterMode, peak measured here.

Peak FLOP/s is measured at start-up with a square matmul in the training dtype on every rank at
once (so ranks sharing a machine share its cores, as they do in training) and summed over ranks.
Nothing is hard-coded: machines differ, and a CPU with AMX runs bf16 several times faster.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode

T = TypeVar("T")


def measure_matmul_peak(dtype: torch.dtype, n: int = 1024, seconds: float = 0.5) -> float:
    """Sustained FLOP/s of an ``n x n`` matmul in ``dtype`` on this process's threads."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    iters, start = 0, time.perf_counter()
    while True:
        a @ b
        iters += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * n**3 * iters / elapsed


def cluster_peak(dtype: torch.dtype) -> float:
    """Sum of every rank's measured matmul peak (all ranks measure at the same time)."""
    if dist.is_initialized():
        dist.barrier()
    peak = torch.tensor([measure_matmul_peak(dtype)], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(peak)
    return float(peak.item())


def _cpu_attention_flops(q_shape, k_shape, *args, out_shape=None, **kwargs) -> int:
    """QK^T and AV of one SDPA call, (B, H, Tq, D) x (B, H, Tk, D): 2 matmuls of 2*B*H*Tq*Tk*D."""
    b, h, tq, d = q_shape
    return 4 * b * h * tq * k_shape[-2] * d


# torch's counter has formulas for the CUDA attention kernels but counts the CPU one as zero.
ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


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

    def read(self) -> dict[str, float]:
        dt = max(time.perf_counter() - self.start - self.excluded, 1e-9)
        out = {"samples_per_s": self.samples / dt}
        if self.tokens:
            out["tokens_per_s"] = self.tokens / dt
        if self.flops and self.peak_flops:
            out["mfu"] = self.flops / dt / self.peak_flops
        return out
