"""MobileViTv2's separable self-attention against multi-head self-attention, at four input sizes.

    python benchmarks/mobilevit_attention.py [--threads 1] [--seconds 2] [--stage 3] [--quick]

Both attention units see the tokens of one MobileViTv2-1.0 stage (default stage 3: stride 8,
width 128) for square 128 / 256 / 384 / 512 px inputs, laid out as MobileViT lays them out: the
map is cut into 2x2 patches and attention runs across the N patches, once per pixel position
(P = 4 sequences of N tokens). Same width on both sides:

* separable: corefm.nn.SeparableSelfAttention (v2) on (1, width, P, N): O(N * width) per sequence;
* MHA: corefm.nn.Attention (4 heads, biases, torch SDPA: what v1's blocks run) on (P, N, width):
  O(N^2 * width) for the scores plus O(N * width^2) for the projections.

FLOPs: torch.utils.flop_counter.FlopCounterMode over one forward (batch 1), with corefm's formula for
the CPU SDPA kernel (which the counter alone counts as zero). The counter counts matmuls and
convolutions only: the softmax and the element-wise products (O(N * width) on both sides) are not in
it. Time: forward (no grad) and forward + backward, batch 1, best of alternating rounds (the machine
is shared); the table gives CPU time of this process, which on one thread is the compute time and
barely moves when other jobs take the core for a while (wall clock is in the JSON too). Prints a
markdown table and writes benchmarks/results/mobilevit_attention.json (not with --quick). Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

from benchmarks.timing import timed  # noqa: E402
from corefm.nn import Attention, MobileViTv2, SeparableSelfAttention  # noqa: E402
from corefm.train.meters import ATTENTION_FLOPS  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mobilevit_attention.json")
SIDES = (128, 256, 384, 512)
PATCH_PIXELS = 4  # 2x2 patches


def stage_geometry(stage: int) -> tuple[int, int]:
    """(stride, attention width) of MobileViTv2-1.0's attention stage ``stage`` (3, 4 or 5)."""
    block = MobileViTv2(1.0).stages[stage - 1][1]
    return 2 ** stage, block.local_rep[1].conv.out_channels


def forward_flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS)
    with counter, torch.no_grad():
        module(x)
    return int(counter.get_total_flops())


def measure(side: int, stride: int, width: int, seconds: float) -> dict:
    torch.manual_seed(0)
    patches = (side // stride // 2) ** 2  # N: tokens per sequence
    sep, mha = SeparableSelfAttention(width).eval(), Attention(width, 4, bias=True).eval()
    x_sep = torch.randn(1, width, PATCH_PIXELS, patches)
    x_mha = torch.randn(PATCH_PIXELS, patches, width)
    flops = (forward_flops(sep, x_sep), forward_flops(mha, x_mha))

    def infer(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
        def fn() -> None:
            with torch.no_grad():
                module(x)
        return fn

    def train(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
        x = x.clone().requires_grad_(True)

        def fn() -> None:
            module.zero_grad(set_to_none=True)
            module(x).square().mean().backward()
        return fn

    fwd = timed([infer(sep, x_sep), infer(mha, x_mha)], seconds, rounds=5)
    step = timed([train(sep, x_sep), train(mha, x_mha)], seconds, rounds=5)
    row = {"side": side, "map": side // stride, "patches_per_sequence": patches, "sequences": PATCH_PIXELS,
           "tokens": patches * PATCH_PIXELS, "width": width,
           "sep_mflops": flops[0] / 1e6, "mha_mflops": flops[1] / 1e6,
           "sep_fwd_ms": fwd[0][0] * 1e3, "mha_fwd_ms": fwd[1][0] * 1e3,
           "sep_fwd_cpu_ms": fwd[0][1] * 1e3, "mha_fwd_cpu_ms": fwd[1][1] * 1e3,
           "sep_fwd_bwd_ms": step[0][0] * 1e3, "mha_fwd_bwd_ms": step[1][0] * 1e3,
           "sep_fwd_bwd_cpu_ms": step[0][1] * 1e3, "mha_fwd_bwd_cpu_ms": step[1][1] * 1e3}
    print(f"  {side} px: {patches} patches x {PATCH_PIXELS}: {row['sep_mflops']:.1f} vs {row['mha_mflops']:.1f} "
          f"MFLOPs, {row['sep_fwd_cpu_ms']:.2f} vs {row['mha_fwd_cpu_ms']:.2f} CPU ms", file=sys.stderr)
    return row


def markdown(rows: list[dict]) -> str:
    first = rows[0]
    lines = ["| input | stage map | N (patches) x P | tokens | separable MFLOPs | MHA MFLOPs | MHA / sep FLOPs | "
             "FLOPs growth sep / MHA | separable fwd CPU ms | MHA fwd CPU ms | MHA / sep fwd time | "
             "separable fwd+bwd CPU ms | MHA fwd+bwd CPU ms | MHA / sep fwd+bwd time |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        growth = f"{r['sep_mflops'] / first['sep_mflops']:.1f}x / {r['mha_mflops'] / first['mha_mflops']:.1f}x"
        lines.append(
            f"| {r['side']} px | {r['map']}x{r['map']} | {r['patches_per_sequence']:,} x {r['sequences']} | "
            f"{r['tokens']:,} | {r['sep_mflops']:.1f} | {r['mha_mflops']:.1f} | "
            f"{r['mha_mflops'] / r['sep_mflops']:.1f}x | {growth} | {r['sep_fwd_cpu_ms']:.2f} | "
            f"{r['mha_fwd_cpu_ms']:.2f} | {r['mha_fwd_cpu_ms'] / r['sep_fwd_cpu_ms']:.1f}x | "
            f"{r['sep_fwd_bwd_cpu_ms']:.2f} | {r['mha_fwd_bwd_cpu_ms']:.2f} | "
            f"{r['mha_fwd_bwd_cpu_ms'] / r['sep_fwd_bwd_cpu_ms']:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum time per measurement")
    parser.add_argument("--stage", type=int, default=3, choices=(3, 4, 5), help="MobileViTv2-1.0 stage")
    parser.add_argument("--quick", action="store_true", help="short measurements, no JSON (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds = 0.2 if args.quick else args.seconds
    stride, width = stage_geometry(args.stage)
    rows = [measure(side, stride, width, seconds) for side in SIDES]
    table = markdown(rows)
    print(f"MobileViTv2-1.0 stage {args.stage} (stride {stride}, width {width}), batch 1, {args.threads} threads\n")
    print(table)
    if not args.quick:
        meta = {"date": time.strftime("%Y-%m-%d"), "threads": args.threads, "torch": torch.__version__,
                "machine": platform.machine(), "cpus": os.cpu_count(), "stage": args.stage, "stride": stride,
                "width": width, "mha_heads": 4, "seconds": args.seconds,
                "command": "python benchmarks/mobilevit_attention.py " + " ".join(sys.argv[1:])}
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
        from benchmarks._chart import write_chart  # the picture beside the JSON

        write_chart("mobilevit_attention", {"meta": meta, "rows": rows}, RESULTS)


if __name__ == "__main__":
    main()
