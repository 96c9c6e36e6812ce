"""Run by tests/train/test_bounds.py on every rank: ``python -m torch.distributed.run --nproc-per-node 2
tests/train/bounds_probe.py OUT.json``.

For ZeRO 1, 2 and 3, in fp32 and bf16: a task whose one bounded parameter (1 element, as CLIP's
logit scale) starts past its bound and whose loss pushes it further out; after each DeepSpeed step
corefm clamps it. Then the loss turns round, and the parameter must come back inside (its gradient
was never cut). Records the module copy and DeepSpeed's fp32 master copy after each step.
"""

from __future__ import annotations

import json
import sys

import deepspeed
import torch
from deepspeed.utils import safe_get_full_fp32_param

from corefm.train.bounds import clamp_bounded

HIGH = 2.0


class Bounded(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.full((1,), 2.5))
        self.other = torch.nn.Linear(4, 4)

    def forward(self, sign: float) -> torch.Tensor:
        x = self.other(torch.ones(1, 4, dtype=self.other.weight.dtype, device=self.other.weight.device))
        return -sign * self.scale.float().sum() + x.float().pow(2).mean() * 0.0


def module_value(p: torch.nn.Parameter) -> float:
    if hasattr(p, "ds_id"):
        with deepspeed.zero.GatheredParameters([p]):
            return float(p.data.float().reshape(-1)[0])
    return float(p.data.float().reshape(-1)[0])


def run(stage: int, precision: str) -> list[dict[str, float]]:
    torch.manual_seed(0)
    model = Bounded()
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage}, "bf16": {"enabled": precision == "bf16"}}
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    trace = []
    for sign in (1.0, 1.0, -1.0, -1.0, -1.0, -1.0):  # push past the bound twice, then back (Adam turns slowly)
        engine.backward(engine(sign))
        engine.step()
        clamp_bounded(engine.module, {"scale": (None, HIGH)})
        p = engine.module.scale
        trace.append({"module": module_value(p), "master": float(safe_get_full_fp32_param(p).reshape(-1)[0])})
    return trace


def main() -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    out = {f"{stage}-{precision}": run(stage, precision) for stage in (1, 2, 3) for precision in ("fp32", "bf16")}
    if torch.distributed.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f)
    # leave together: a rank whose gloo threads are still up at interpreter exit can abort there
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
