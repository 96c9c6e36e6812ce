"""Weight EMA at ZeRO 1, 2 and 3, fp32 and bf16, over two gloo ranks (tests/train/ema_probe.py): the
sharded average equals one computed on the side from whole weights, saves whole and loads back,
evaluates as the EMA even right after a raw evaluation, and gives the raw weights back bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from corefm.train.ema import WeightEma
from tests.e2e.util import run_ranks


@pytest.mark.slow
def test_ema_at_every_zero_stage(tmp_path):
    out = tmp_path / "ema.json"
    run_ranks(Path(__file__).with_name("ema_probe.py"), str(out))
    results = json.loads(out.read_text())
    assert sorted(results) == [f"{s}-{p}" for s in (1, 2, 3) for p in ("bf16", "fp32")]
    for config, res in results.items():
        zero3 = config.startswith("3")
        # ZeRO-3 keeps each parameter's EMA by partition; buffers are never partitioned
        assert res["kinds"]["embed.weight"] == ("sharded" if zero3 else "whole"), config
        assert res["kinds"]["norm.running_mean"] == "whole", config
        assert res["names"] and res["tied_shared"] and res["reload_equal"] and res["restored"], (config, res)
        assert res["max_diff"] == 0.0, (config, res)  # the same fp32 lerp as the reference
        assert res["applied_diff"] == 0.0 and res["ema_logits_vs_reference"] == 0.0, (config, res)
        assert res["ema_differs_from_raw"] > 1e-2, (config, res)  # the probe can tell them apart


def test_momentum_and_single_process_update():
    net = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="momentum"):
        WeightEma(net, 1.0)
    ema = WeightEma(net, 0.5)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(2.0)
    ema.update()
    torch.testing.assert_close(ema.full_state_dict()["weight"], start + 1.0)
    with ema.applied():
        torch.testing.assert_close(net.weight.detach(), start + 1.0)
    torch.testing.assert_close(net.weight.detach(), start + 2.0)


def test_samples_per_batch_counts_the_batch_not_the_recipe():
    from corefm.train.trainer import batch_samples

    # a multi-scale batch of 20 images where the recipe says 32 (samples/s must count 20)
    assert batch_samples({"image": torch.zeros(20, 1, 80, 80), "label": torch.zeros(20)}, 32) == 20
    assert batch_samples({"meta": "x"}, 32) == 32
