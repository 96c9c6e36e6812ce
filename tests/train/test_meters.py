"""FLOP counting for MFU: attention kernels on every device, grouped-query calls included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corefm.train.meters import count_flops
from tests.stand_in_device import stand_in_cuda

A = torch.ops.aten
B, HQ, HKV, TQ, TK, DK, DV = 2, 8, 2, 16, 24, 32, 32
EXPECTED = 2 * B * HQ * TQ * TK * (DK + DV)  # QK^T and AV at the query heads' count


def _qkv(device: str, heads_kv: int = HKV) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.randn(B, HQ, TQ, DK, device=device, dtype=torch.bfloat16)
    k = torch.randn(B, heads_kv, TK, DK, device=device, dtype=torch.bfloat16)
    return q, k, torch.randn(B, heads_kv, TK, DV, device=device, dtype=torch.bfloat16)


@pytest.mark.parametrize("kernel", ["flash", "efficient", "cudnn"])
def test_cuda_attention_kernels_count_grouped_query_calls(kernel):
    """On a GPU, OpenELM's grouped-query SDPA reaches these kernels with fewer K/V heads than query
    heads; torch before 2.14 raised an AssertionError there, which stopped every OpenELM GPU run at
    its first step (seen on an H200 with torch 2.11)."""
    calls = {"flash": lambda q, k, v: A._scaled_dot_product_flash_attention(q, k, v, 0.0, True),
             "efficient": lambda q, k, v: A._scaled_dot_product_efficient_attention(q, k, v, None, False, 0.0, True),
             "cudnn": lambda q, k, v: A._scaled_dot_product_cudnn_attention(q, k, v, None, False, 0.0, True)}
    with stand_in_cuda():
        q, k, v = _qkv("cuda")
        assert count_flops(lambda: calls[kernel](q, k, v))[1] == EXPECTED


def test_the_cpu_kernel_counts_as_the_math_it_replaces():
    """torch's counter counts its fused CPU kernel as zero FLOPs; corefm counts it as the matmuls."""
    q, k, v = _qkv("cpu", heads_kv=HQ)
    fused = count_flops(lambda: A._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True))[1]
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        math = count_flops(lambda: F.scaled_dot_product_attention(q.float(), k.float(), v.float()))[1]
    assert fused == math == EXPECTED
