"""ByteFormer speed: throughput against a pixel ViT of the same width, and cost vs input length.

    python benchmarks/byteformer_speed.py [--threads 2] [--seconds 3] [--quick]

1. Side by side, training steps (forward + backward + AdamW) and inference, same width, depth and
   heads, on the same images: ByteFormer reads the TIFF file bytes, the ViT reads the pixels.
   * paper size: ByteFormer-Ti (dim 192, 12 layers, window 128, kernel 32) on 224x224 RGB TIFF
     (150,702 bytes) vs ViT-Ti/16 (DeiT-Ti: 196 patches);
   * demo size: the README's CPU recipes (dim 64, 6 layers) on 28x28 grey TIFF (906 bytes) vs
     the pixel ViT of fashion_vit.yaml (4x4 patches).
2. ByteFormer-Ti at four byte lengths (4x apart): forward FLOPs and time. With windows of 128
   tokens, attention costs O(T * window) instead of O(T^2), so FLOPs per byte stay flat; the
   table also gives what full attention over the same tokens would cost.

FLOPs come from torch.utils.flop_counter, plus a formula for the CPU flash-attention kernel,
which torch's counter does not cover (it would count attention as 0). Timings: best of
alternating rounds (the machine is shared), as wall-clock samples/s and as samples per
CPU-second of this process (steadier when other jobs compete); each measurement runs >= --seconds.
Prints markdown tables and writes benchmarks/results/byteformer_speed.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

from benchmarks.timing import timed  # noqa: E402
from corefm.train.meters import count_flops  # noqa: E402
from projects.byteformer.model import ByteFormer, ByteFormerConfig, conv_tokens  # noqa: E402
from projects.vit.model import ViTClassifier, ViTClassifierConfig  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEMO = dict(dim=64, heads=2, ffn_dim=256, layers=6, window_size=32, merge_after=[0, 1, 3], kernel_size=16)


def count_forward_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one no-grad call (corefm's counter: CPU attention included)."""
    with torch.no_grad():
        return count_flops(fn)[1]


def tiff_batch(size: int, channels: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random-content images of one size as TIFF bytes (B, L) long, and the pixels (B, C, H, W)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (batch, size, size, channels) if channels == 3 else (batch, size, size)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    files = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="TIFF")
        files.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    data = torch.from_numpy(np.stack(files).astype(np.int64))
    images = torch.from_numpy(pixels).float().div(255)
    images = images.permute(0, 3, 1, 2) if channels == 3 else images[:, None]
    return data, images


def side_by_side(name: str, bf_cfg: ByteFormerConfig, vit_cfg: ViTClassifierConfig, size: int, channels: int,
                 batch: int, seconds: float) -> list[dict]:
    data, images = tiff_batch(size, channels, batch)
    models = [("ByteFormer (TIFF bytes)", ByteFormer(bf_cfg), data), ("pixel ViT", ViTClassifier(vit_cfg), images)]
    train_steps, infers = [], []
    for _, model, x in models:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train_step(model=model, x=x, opt=opt) -> None:
            model.train()
            opt.zero_grad(set_to_none=True)
            model(x).float().logsumexp(-1).mean().backward()
            opt.step()

        def infer(model=model, x=x) -> None:
            model.eval()
            with torch.no_grad():
                model(x)

        train_steps.append(train_step)
        infers.append(infer)
    t_train, t_infer = timed(train_steps, seconds), timed(infers, seconds)
    rows = []
    for (model_name, model, x), (train_wall, train_cpu), (infer_wall, infer_cpu) in zip(models, t_train, t_infer):
        is_bytes = isinstance(model, ByteFormer)
        tokens = conv_tokens(data.shape[1], bf_cfg.stride) if is_bytes else (vit_cfg.image_size // vit_cfg.patch_size) ** 2
        rows.append({"setting": name, "model": model_name, "width": bf_cfg.dim, "layers": bf_cfg.layers,
                     "input": f"{data.shape[1]:,} bytes" if is_bytes else f"{size}x{size}x{channels} pixels",
                     "tokens": tokens, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                     "gflops_fwd": count_forward_flops(lambda: model(x)) / batch / 1e9,
                     "train_samples_s": batch / train_wall, "train_samples_cpu_s": batch / train_cpu,
                     "infer_samples_s": batch / infer_wall, "infer_samples_cpu_s": batch / infer_cpu})
        print(f"  {name}: {model_name}: {rows[-1]['train_samples_s']:.1f} train / "
              f"{rows[-1]['infer_samples_s']:.1f} infer samples/s", file=sys.stderr)
    return rows


def scaling(lengths: list[int], seconds: float) -> list[dict]:
    cfg = ByteFormerConfig(max_bytes=max(lengths))
    model = ByteFormer(cfg).eval()
    rows = []
    for n in lengths:
        x = torch.randint(0, 256, (1, n))
        flops = count_forward_flops(lambda: model(x))
        ((t, cpu),) = timed([lambda: _no_grad(model, x)], seconds)
        # Full attention over the same tokens: per layer 4 * T^2 * C instead of 4 * T_pad * window * C.
        full, windowed, tokens = 0, 0, conv_tokens(n, cfg.stride)
        for i in range(cfg.layers):
            padded = -(-tokens // cfg.window_size) * cfg.window_size
            windowed += 4 * padded * cfg.window_size * cfg.dim
            full += 4 * tokens * tokens * cfg.dim
            if i in cfg.merge_after:
                tokens = -(-tokens // 2)
        rows.append({"bytes": n, "tokens_after_conv": conv_tokens(n, cfg.stride), "gflops_fwd": flops / 1e9,
                     "mflops_per_byte": flops / n / 1e6, "ms_fwd": t * 1e3, "us_per_byte": t / n * 1e6,
                     "cpu_ms_fwd": cpu * 1e3, "cpu_us_per_byte": cpu / n * 1e6,
                     "gflops_if_full_attention": (flops - windowed + full) / 1e9})
        print(f"  {n:,} bytes: {flops / 1e9:.2f} GFLOPs, {t * 1e3:.0f} ms", file=sys.stderr)
    return rows


def _no_grad(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def _rate(v: float) -> str:
    return f"{v:,.1f}" if v >= 10 else f"{v:.2f}"


def markdown(speed: list[dict], scale: list[dict]) -> str:
    lines = ["| setting | model | input | tokens | params | GFLOPs/sample (fwd) | train samples/s | "
             "train samples/CPU-s | inference samples/s | inference samples/CPU-s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in speed:
        lines.append(f"| {r['setting']} | {r['model']} | {r['input']} | {r['tokens']:,} | {r['params_m']:.2f}M | "
                     f"{r['gflops_fwd']:.3f} | {_rate(r['train_samples_s'])} | {_rate(r['train_samples_cpu_s'])} | "
                     f"{_rate(r['infer_samples_s'])} | {_rate(r['infer_samples_cpu_s'])} |")
    lines += ["", "| bytes | tokens after Conv1D | GFLOPs (fwd) | MFLOPs/byte | ms (fwd) | us/byte | CPU us/byte | "
              "GFLOPs with full attention |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in scale:
        lines.append(f"| {r['bytes']:,} | {r['tokens_after_conv']:,} | {r['gflops_fwd']:.2f} | "
                     f"{r['mflops_per_byte']:.3f} | {r['ms_fwd']:.0f} | {r['us_per_byte']:.2f} | "
                     f"{r['cpu_us_per_byte']:.2f} | {r['gflops_if_full_attention']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum time per measurement")
    parser.add_argument("--quick", action="store_true", help="demo size and short inputs only (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    speed = side_by_side("demo, 28x28 grey", ByteFormerConfig(**DEMO, max_bytes=1024),
                         ViTClassifierConfig(image_size=28, patch_size=4, in_chans=1, width=64, layers=6, heads=2,
                                             pool="mean"), 28, 1, 32, args.seconds)
    if not args.quick:
        speed += side_by_side("paper, 224x224 RGB", ByteFormerConfig(max_bytes=151_000),
                              ViTClassifierConfig(image_size=224, patch_size=16, in_chans=3, width=192, layers=12,
                                                  heads=3), 224, 3, 4, args.seconds)
    lengths = [1024, 4096, 16384, 65536] if args.quick else [4096, 16384, 65536, 262144]
    scale = scaling(lengths, args.seconds)
    table = markdown(speed, scale)
    print(table)
    if not args.quick:
        os.makedirs(RESULTS, exist_ok=True)
        meta = {"date": time.strftime("%Y-%m-%d"), "threads": args.threads, "torch": torch.__version__,
                "machine": platform.machine(), "cpus": os.cpu_count()}
        with open(os.path.join(RESULTS, "byteformer_speed.json"), "w") as f:
            json.dump({"meta": meta, "side_by_side": speed, "scaling": scale}, f, indent=2)
        with open(os.path.join(RESULTS, "byteformer_speed.md"), "w") as f:
            f.write(table + "\n")
        from benchmarks._chart import write_chart  # the picture beside the JSON

        write_chart("byteformer_speed", {"meta": meta, "side_by_side": speed, "scaling": scale},
                    os.path.join(RESULTS, "byteformer_speed.json"))


if __name__ == "__main__":
    main()
