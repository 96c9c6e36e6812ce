"""Elastic resume, executed: a run checkpointed by 2 ranks resumes on 1, whose checkpoint resumes on 2
again, at ZeRO 1/2/3 in fp32 and bf16, through DeepSpeed's universal checkpoint.

Each stage saves what it loaded, before any step, in its own world's layout; DeepSpeed's converter
consolidates that and the checkpoint it came from, and every parameter's fp32 master weights and
Adam moments must be equal bit for bit. The learning rate continues where it was; the global batch
is kept by trading ranks for accumulation. (That the data position is remapped without repeating or
skipping a sample is counted in tests/data/test_data_elastic.py, on the loader the trainer uses.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from corefm.train import checkpoint as ckpt
from tests.e2e.util import RECIPE, run_ranks, small_overrides

pytestmark = pytest.mark.slow

MAX_STEPS = 12
# (ranks, grad_accum, steps): the global batch stays 2 x 16
STAGES = [(2, 1, 4), (1, 2, 2), (2, 1, 2)]
KINDS = ("fp32", "exp_avg", "exp_avg_sq")  # and Adam's step, where DeepSpeed keeps it per parameter (ZeRO 1/2)


def _stage(digits: Path, run_dir: Path, out: Path, ranks: int, accum: int, steps: int, zero: int,
           precision: str) -> tuple[dict, str]:
    sets = small_overrides(digits, run_dir, **{
        "train.max_steps": MAX_STEPS, "train.grad_accum": accum, "deepspeed.zero_stage": zero,
        "deepspeed.precision": precision, "checkpoint.every": 0, "data.num_workers": 1})
    r = run_ranks(Path(__file__).with_name("elastic_probe.py"), str(RECIPE), str(steps), str(out),
                  *sum((["--set", s] for s in sets), []), nproc=ranks)
    return json.loads((out / "probe.json").read_text()), r.stdout + r.stderr


def _consolidated(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Per parameter: DeepSpeed's consolidated fp32 weights and optimizer moments."""
    zero = ckpt.convert_to_universal(path) / "zero"
    def tensor(f: Path) -> torch.Tensor:
        value = torch.load(f, weights_only=False)
        return value["param"] if isinstance(value, dict) else value  # step.pt is a bare tensor

    states = {p.name: {f.stem: tensor(f) for f in p.glob("*.pt")} for p in zero.iterdir() if p.is_dir()}
    assert states and all(set(KINDS) <= set(s) for s in states.values()), states.keys()
    return states


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("zero", [1, 2, 3])
def test_resume_two_to_one_to_two_ranks_carries_weights_moments_and_schedule(digits, tmp_path, zero, precision):
    run_dir = tmp_path / "run"
    probes, step = [], 0
    for i, (ranks, accum, steps) in enumerate(STAGES):
        probe, out = _stage(digits, run_dir, tmp_path / f"stage{i}", ranks, accum, steps, zero, precision)
        assert probe["resumed_step"] == step and math.isfinite(probe["loss"])
        if i:
            before = STAGES[i - 1][0]
            line = [line for line in out.splitlines() if "corefm: world size" in line]
            assert len(line) == 1 and line[0].startswith(f"corefm: world size {before} -> {ranks}: step_{step:08d}"), out[-3000:]
            assert "global batch 32 kept" in line[0] and "epoch 0 continues without" in line[0]
            assert probe["resumed_lr"] == probes[-1]["final_lr"]  # the schedule continues
            original = _consolidated(run_dir / "checkpoints" / f"step_{step:08d}")
            loaded = _consolidated(tmp_path / f"stage{i}" / "loaded" / f"step_{step:08d}")
            assert original.keys() == loaded.keys()
            for name, states in original.items():
                assert states.keys() == loaded[name].keys(), name
                for kind, value in states.items():
                    assert torch.equal(value, loaded[name][kind]), (name, kind)
        step += steps
        assert probe["step"] == step
        probes.append(probe)
