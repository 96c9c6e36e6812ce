"""CatLIP's training step against CLIP's, same image tower and batch, side by side.

    python benchmarks/catlip_step.py [--threads 2] [--seconds 6] [--quick]

For each setting, one process builds a CLIP (corefm's ``clip`` model from a preset) and a CatLIP
with the very same image tower config (``catlip`` model, same preset) and times one full
optimizer step of each, alternating (benchmarks/timing.py):

* CLIP: image tower + text tower on captions of ``--caption-tokens`` tokens (cut after the end-of-
  text token, as ClipModel does) + open_clip's ClipLoss (one rank: no feature all-gather) +
  backward + AdamW step;
* CatLIP: image tower + one linear layer over ``--vocab`` synsets + BCE (summed over synsets) +
  backward + AdamW step. The default vocabulary is the paper's DataComp one (24,320 synsets).

FLOPs per step (forward + backward, torch's FlopCounterMode with corefm's attention formula) show
where the difference comes from. A single machine measures compute only: at scale the contrastive
loss also all-gathers every rank's features each step, which CatLIP does not; that is part of the
paper's 2.7x and is not in these numbers. Prints a markdown table and writes
benchmarks/results/catlip_step.json (not with --quick). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

from benchmarks.timing import timed  # noqa: E402
from corefm.train.meters import ATTENTION_FLOPS  # noqa: E402
from projects.catlip.model import CatlipConfig, CatlipModel  # noqa: E402
from projects.clip_pseudo.config import config_dict, named_config  # noqa: E402
from projects.clip_pseudo.model import ClipModel  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "catlip_step.json")
# (preset, image size, batch): the demo's tower at its batch, and a ViT-B/32 at a CPU-sized batch
SETTINGS = (("tiny", 28, 128), ("ViT-B-32", 224, 16))


def clip_step(model: ClipModel, images: torch.Tensor, tokens: torch.Tensor):
    from open_clip.loss import ClipLoss

    loss_fn, opt = ClipLoss(), torch.optim.AdamW(model.parameters(), lr=1e-4)

    def fn() -> None:
        out = model(images, tokens)
        loss = loss_fn(out.image_features, out.text_features, out.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return fn


def catlip_step(model: CatlipModel, images: torch.Tensor, target: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def fn() -> None:
        loss = F.binary_cross_entropy_with_logits(model(images), target, reduction="none").sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return fn


def step_flops(fn) -> int:
    counter = FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS)
    with counter:
        fn()
    return int(counter.get_total_flops())


def measure(preset: str, size: int, batch: int, vocab: int, caption_tokens: int, seconds: float) -> dict:
    torch.manual_seed(0)
    cfg = named_config(preset, image_size=size)
    clip = ClipModel(cfg)
    catlip = CatlipModel(CatlipConfig(**config_dict(cfg), num_classes=vocab))
    images = torch.randn(batch, 3, size, size)
    tokens = torch.randint(1, 1000, (batch, cfg.context_length))
    tokens[:, caption_tokens - 1] = cfg.vocab_size - 1  # the end-of-text id (the row's largest)
    tokens[:, caption_tokens:] = 0
    target = (torch.rand(batch, vocab) < 5 / vocab).float()  # a handful of synsets per caption
    fns = [clip_step(clip, images, tokens), catlip_step(catlip, images, target)]
    flops = [step_flops(fn) for fn in fns]
    text_flops = step_flops(lambda: clip.encode_text(tokens).sum().backward())
    (clip_wall, clip_cpu), (cat_wall, cat_cpu) = timed(fns, seconds)
    n_params = [sum(p.numel() for p in m.parameters()) for m in (clip, catlip)]
    row = {"preset": preset, "image_size": size, "batch": batch, "vocab": vocab, "caption_tokens": caption_tokens,
           "clip_params_m": n_params[0] / 1e6, "catlip_params_m": n_params[1] / 1e6,
           "clip_gflops": flops[0] / 1e9, "catlip_gflops": flops[1] / 1e9, "text_tower_gflops": text_flops / 1e9,
           "clip_ms": clip_wall * 1e3, "catlip_ms": cat_wall * 1e3,
           "clip_cpu_ms": clip_cpu * 1e3, "catlip_cpu_ms": cat_cpu * 1e3,
           "speedup": clip_wall / cat_wall, "clip_img_s": batch / clip_wall, "catlip_img_s": batch / cat_wall}
    print(f"  {preset} {size}px b{batch}: CLIP {row['clip_ms']:.1f} ms, CatLIP {row['catlip_ms']:.1f} ms "
          f"({row['speedup']:.2f}x)", file=sys.stderr)
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| image tower | batch | vocab | CLIP step ms | CatLIP step ms | CatLIP speed-up | CLIP GFLOPs | "
             "of which text tower | CatLIP GFLOPs | FLOPs ratio | params CLIP / CatLIP (M) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['preset']} {r['image_size']} px | {r['batch']} | {r['vocab']:,} | {r['clip_ms']:.1f} | "
            f"{r['catlip_ms']:.1f} | **{r['speedup']:.2f}x** | {r['clip_gflops']:.1f} | {r['text_tower_gflops']:.1f} | "
            f"{r['catlip_gflops']:.1f} | {r['clip_gflops'] / r['catlip_gflops']:.2f}x | "
            f"{r['clip_params_m']:.1f} / {r['catlip_params_m']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0, help="minimum time per measurement")
    parser.add_argument("--vocab", type=int, default=24320, help="synsets (the paper's DataComp vocabulary)")
    parser.add_argument("--caption-tokens", type=int, default=20, help="tokens up to the end-of-text token")
    parser.add_argument("--quick", action="store_true", help="the tiny setting, short measurements, no JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = SETTINGS[:1] if args.quick else SETTINGS
    seconds = 0.2 if args.quick else args.seconds
    rows = [measure(p, s, b, args.vocab, args.caption_tokens, seconds) for p, s, b in settings]
    print(markdown(rows))
    if not args.quick:
        record = {"date": time.strftime("%Y-%m-%d"), "command": "python " + " ".join(sys.argv),
                  "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                             f"{args.threads} threads", "torch": torch.__version__, "rows": rows}
        with open(RESULTS, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        from benchmarks._chart import write_chart  # the picture beside the JSON

        write_chart("catlip_step", record, RESULTS)


if __name__ == "__main__":
    main()
