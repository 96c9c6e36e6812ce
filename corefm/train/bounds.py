"""Parameters kept inside bounds after every optimizer step (CLIP's logit scale, as open_clip does).

Clamping inside a forward would zero the gradient of a parameter past its bound, so it could never
come back; clamping the parameter itself after the step leaves its gradient alone. Under DeepSpeed a
parameter lives twice: the module's copy (bf16, or partitioned under ZeRO-3) that forwards read, and
the optimizer's fp32 master copy that steps update and later copy back into the module. Both are
clamped, the master through DeepSpeed's public tensor-fragment API, so neither undoes the other.
"""

from __future__ import annotations

import torch
from deepspeed.utils import (safe_get_full_fp32_param, safe_get_local_fp32_param, safe_set_full_fp32_param,
                             safe_set_local_fp32_param)

Bounds = dict[str, tuple[float | None, float | None]]


def clamp_bounded(module: torch.nn.Module, bounds: Bounds) -> None:
    """Collective (every rank calls it): clamp each named parameter of ``module`` to its ``(low, high)``
    (None: open on that side), module copy and fp32 master copy alike. No host sync: device ops only."""
    if not bounds:
        return
    params = dict(module.named_parameters())
    for name, (low, high) in bounds.items():
        p = params[name]
        if hasattr(p, "ds_id"):
            # ZeRO-3: each rank clamps its own partition of both copies (elementwise, so no gather; the
            # full-parameter API also fails for a parameter smaller than the world, as CLIP's scale is)
            master = safe_get_local_fp32_param(p)
            if master is not None:
                safe_set_local_fp32_param(p, master.clamp(low, high))
            p.ds_tensor.data.clamp_(low, high)
            if p.data.numel():  # a small parameter stays gathered between steps (ZeRO-3's persistence)
                p.data.clamp_(low, high)
            continue
        master = safe_get_full_fp32_param(p)  # ZeRO 1/2 (an all-reduce); None without a master copy
        if master is not None:
            safe_set_full_fp32_param(p, master.clamp(low, high))
        p.data.clamp_(low, high)
