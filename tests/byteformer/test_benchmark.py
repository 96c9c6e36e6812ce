"""The speed benchmark's measurements: attention FLOPs are counted and cost grows linearly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from projects.byteformer.model import ByteFormer, ByteFormerConfig
from tests.byteformer.conftest import tiny_model_args

PATH = Path(__file__).resolve().parents[2] / "benchmarks/byteformer_speed.py"


def bench():
    spec = importlib.util.spec_from_file_location("byteformer_speed", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attention_flops_are_counted():
    b = bench()
    with_attn = ByteFormer(ByteFormerConfig(**tiny_model_args(window_size=64)))
    x = torch.randint(0, 256, (1, 512))
    small = ByteFormer(ByteFormerConfig(**tiny_model_args(window_size=8)))
    small.load_state_dict(with_attn.state_dict())
    # Same weights, 8x wider windows: only attention FLOPs differ, and they must show.
    assert b.count_forward_flops(lambda: with_attn(x)) > b.count_forward_flops(lambda: small(x))


def test_cost_per_byte_is_flat_with_windows():
    rows = bench().scaling([4096, 16384], seconds=0.01)
    per_byte = [r["mflops_per_byte"] for r in rows]
    assert abs(per_byte[1] / per_byte[0] - 1) < 0.1
    assert rows[1]["gflops_if_full_attention"] > 1.1 * rows[1]["gflops_fwd"]  # 1,024 tokens: T^2 shows
