"""Run by tests/train/test_ema.py on every rank: ``python -m torch.distributed.run --nproc-per-node 2
tests/train/ema_probe.py OUT.json``.

For ZeRO 1, 2 and 3, in fp32 and bf16, on a model with a large (partitioned) weight, a small one that
ZeRO-3 keeps gathered, a tied weight and BatchNorm buffers: train a few steps with a WeightEma, and
compare it with an EMA computed on the side from the whole weights after every step; save it whole,
load it into a fresh WeightEma, and evaluate with it applied and after.
"""

from __future__ import annotations

import json
import sys

import deepspeed
import torch

from corefm.nn.norms import BatchNorm1d
from corefm.train.ema import WeightEma

MOMENTUM = 0.25  # large, so a few steps move the average far from the weights


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(64, 48)  # 3072 elements: partitioned at ZeRO-3 (threshold 100)
        self.norm = BatchNorm1d(48)  # fp32 statistics beside bf16 weights
        self.small = torch.nn.Linear(48, 8)  # 392 elements, above the threshold too
        self.bias = torch.nn.Parameter(torch.zeros(8))  # 8 elements: kept gathered (ds_persist)
        self.out = torch.nn.Linear(48, 64, bias=False)
        self.out.weight = self.embed.weight  # tied

    def forward(self, ids: torch.Tensor, logits_only: bool = False) -> torch.Tensor:
        h = self.norm(self.embed(ids))
        logits = self.out(h).float() + self.small(h).float().sum(-1, keepdim=True) + self.bias.float().sum()
        return logits if logits_only else torch.nn.functional.cross_entropy(logits, ids)


def whole(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every floating state-dict tensor of ``module``, gathered, in fp32."""
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params) if hasattr(params[0], "ds_id") else _nothing():
        return {k: v.detach().float().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def run(stage: int, precision: str) -> dict:
    torch.manual_seed(0)
    model = Net()
    config = {"train_micro_batch_size_per_gpu": 16, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 100},
              "bf16": {"enabled": precision == "bf16"}}
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.0)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    net = engine.module
    ema = WeightEma(net, MOMENTUM)
    kinds = {e.names[0]: ("sharded" if e.sharded else "whole") for e in ema.entries}
    reference = whole(net)
    gen = torch.Generator().manual_seed(torch.distributed.get_rank())
    for _ in range(4):
        engine.backward(engine(torch.randint(0, 64, (16,), generator=gen)))
        engine.step()
        ema.update()
        for k, v in whole(net).items():
            reference[k].lerp_(v, MOMENTUM)
    full = ema.full_state_dict()
    errors = {}
    if torch.distributed.get_rank() == 0:
        errors["names"] = sorted(full) == sorted(net.state_dict())
        errors["tied_shared"] = bool(torch.equal(full["embed.weight"], full["out.weight"]))
        errors["max_diff"] = max(float((full[k] - reference[k]).abs().max()) for k in reference)
    # a fresh EMA loaded from the whole copy holds the same average
    again = WeightEma(net, MOMENTUM)
    everywhere = [full]
    torch.distributed.broadcast_object_list(everywhere, src=0)
    again.load_full_state_dict(everywhere[0])
    reloaded = again.full_state_dict()
    if torch.distributed.get_rank() == 0:
        errors["reload_equal"] = all(torch.equal(reloaded[k], full[k]) for k in full)
    # applied: the model computes with the EMA weights, even right after a raw evaluation (which leaves
    # ZeRO-3 parameters gathered); afterwards the raw weights are back, bit for bit
    probe = torch.arange(16)
    engine.eval()
    with torch.no_grad():
        raw_logits = engine(probe, True)
        before = whole(net)
        with again.applied():
            ema_logits = engine(probe, True)
            inside = whole(net)
        after = whole(net)
        raw_again = engine(probe, True)
    engine.train()
    if torch.distributed.get_rank() == 0:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        reference = Net()
        reference.load_state_dict(full)
        reference.to(dtype).eval()
        for name in ("running_mean", "running_var"):  # buffers stay fp32, as under DeepSpeed
            setattr(reference.norm, name, full[f"norm.{name}"].clone())
        with torch.no_grad():
            errors["ema_logits_vs_reference"] = float((ema_logits - reference(probe, True)).abs().max())
        errors["ema_differs_from_raw"] = float((ema_logits - raw_logits).abs().max())
        errors["applied_diff"] = max(float((inside[k] - full[k].to(net.state_dict()[k].dtype).float()).abs().max())
                                     for k in inside)
        errors["restored"] = all(torch.equal(before[k], after[k]) for k in before) and torch.equal(raw_again, raw_logits)
    return {"kinds": kinds, **errors}


def main() -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    out = {f"{stage}-{precision}": run(stage, precision) for stage in (1, 2, 3) for precision in ("fp32", "bf16")}
    if torch.distributed.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f, indent=1)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
