"""Which attention and linear kernels run, decided per device in this one place.

Two choices, each ``auto`` by default and forceable from a recipe (``model.attention_backend``,
``model.linear_backend``) or a benchmark (:func:`selected`):

| choice | ``auto`` on CPU | ``auto`` on CUDA (and any other device) | forced values |
|---|---|---|---|
| attention (unmasked) | single-query kernel for one decoding query; dense batched-GEMM kernel for short bf16 sequences; else SDPA | torch SDPA (flash / memory-efficient / cuDNN, as torch picks) | ``sdpa``, ``dense`` |
| linear while decoding | oneDNN-packed weights (bf16/fp32) | plain ``F.linear`` | ``plain``, ``packed`` (CPU only) |

Masked attention always runs torch's SDPA (the dense kernels take no mask). The CPU kernels live
in :mod:`corefm.nn.kernels.cpu_attention` (plain torch ops, so ``dense`` also runs elsewhere) and
:mod:`corefm.nn.kernels.cpu_linear` (oneDNN's private CPU ops: never reached off the CPU; asking
for ``packed`` on another device is an error, not a silent fallback).

The choice is process-wide, like torch's own ``torch.backends`` switches: the trainer sets it once
from the recipe before the model runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F

from torch import nn

from corefm.nn.kernels.cpu_attention import dense_attention, fits_dense, single_query_attention
from corefm.nn.kernels.cpu_linear import Linear, can_pack, linear, packed_weights

AttentionBackend = Literal["auto", "sdpa", "dense"]
LinearBackend = Literal["auto", "plain", "packed"]
ATTENTION_BACKENDS: tuple[str, ...] = ("auto", "sdpa", "dense")
LINEAR_BACKENDS: tuple[str, ...] = ("auto", "plain", "packed")


@dataclass(frozen=True)
class KernelChoice:
    attention: AttentionBackend = "auto"
    linear: LinearBackend = "auto"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention backend {self.attention!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
        if self.linear not in LINEAR_BACKENDS:
            raise ValueError(f"linear backend {self.linear!r} is not one of {', '.join(LINEAR_BACKENDS)}")

    def check_device(self, device: torch.device) -> None:
        """Refuse a forced choice the device cannot run (``packed`` is oneDNN, CPU only)."""
        if self.linear == "packed" and torch.device(device).type != "cpu":
            raise ValueError(f"linear backend 'packed' runs oneDNN's CPU kernels; this run is on {device} "
                             "(use auto or plain)")


_choice = KernelChoice()


def current() -> KernelChoice:
    return _choice


def select(attention: AttentionBackend = "auto", linear: LinearBackend = "auto") -> KernelChoice:
    """Set the process-wide choice; returns the previous one."""
    global _choice
    previous, _choice = _choice, KernelChoice(attention, linear)
    return previous


@contextmanager
def selected(**choice: str) -> Iterator[KernelChoice]:
    """``with selected(attention="sdpa"): ...`` runs the block under that choice, then restores."""
    global _choice
    previous = _choice
    _choice = replace(previous, **choice)
    try:
        yield _choice
    finally:
        _choice = previous


def attention_kernel(q: torch.Tensor, k: torch.Tensor, is_causal: bool) -> str:
    """The kernel an unmasked call runs: ``"sdpa"``, ``"dense"`` or ``"single_query"``.

    q: (B, Hq, T, hd), k: (B, Hk, S, hd).
    """
    one_query = not is_causal and q.shape[-2] == 1
    if _choice.attention == "sdpa":
        return "sdpa"
    if _choice.attention == "dense":
        return "single_query" if one_query else "dense"
    if q.device.type != "cpu":
        return "sdpa"
    # torch's CPU flash kernel is slow for one query and for short bf16 sequences (see
    # cpu_attention); in fp32 and fp16 the CPU's GEMMs are too slow for the dense kernel to win.
    if one_query:
        return "single_query"
    if q.dtype == torch.bfloat16 and fits_dense(q, k):
        return "dense"
    return "sdpa"


def unmasked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool) -> torch.Tensor:
    """q: (B, Hq, T, hd), k/v: (B, Hk, S, hd) -> (B, Hq, T, hd) through the chosen kernel (GQA native)."""
    kernel = attention_kernel(q, k, is_causal)
    if kernel == "single_query":
        return single_query_attention(q, k, v)
    if kernel == "dense":
        return dense_attention(q, k, v, causal=is_causal)
    # The fused kernels support GQA natively, so the KV heads need not be materialised n_rep times.
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=q.shape[1] != k.shape[1])


def packs_weights(weight: torch.Tensor) -> bool:
    """Whether decoding runs this weight from a oneDNN-packed copy under the current choice."""
    if _choice.linear == "plain":
        return False
    if _choice.linear == "packed":
        _choice.check_device(weight.device)
    return can_pack(weight)


def decoding_weights(model: nn.Module, extra: list[torch.Tensor] | tuple[torch.Tensor, ...] = ()):
    """Context for incremental decoding: the model's corefm :class:`Linear` weights (and ``extra``
    weights passed to :func:`linear`, such as a tied LM head) run from packed copies where the
    choice packs them; elsewhere a no-op context."""
    weights = [m.weight for m in model.modules() if isinstance(m, Linear)] + list(extra)
    return packed_weights([w for w in weights if packs_weights(w)])


__all__ = ["ATTENTION_BACKENDS", "LINEAR_BACKENDS", "KernelChoice", "Linear", "attention_kernel", "current",
           "decoding_weights", "linear", "packs_weights", "select", "selected", "unmasked_attention"]
