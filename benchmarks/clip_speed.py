"""CLIP training-step throughput: corefm's CLIP vs open_clip's own model of the same config.

Both models get the same weights (ours exported to open_clip's names), the same batch (random
images, real captions through open_clip's tokenizer at the full 77-token context), the same loss
(open_clip's ClipLoss) and a torch AdamW step; fp32, and bf16 under CPU autocast. Runs alternate
between the models; the best of ``--repeats`` is reported as samples/s (wall clock) and samples
per CPU-second of this process (steadier on a shared machine).

    python benchmarks/clip_speed.py [--model ViT-B-32] [--batch-size 16] [--steps 4] [--repeats 3]

The row "corefm, full context" runs our model with the end-of-text truncation switched off, to
show how much of the difference comes from not running the text tower over padding. Prints a
markdown table and writes JSON to benchmarks/results/clip_speed_<model>.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "clip_speed_{model}.json")
CAPTIONS = ["a photo of a {}.", "a black and white photo of the {} on a table", "{}",
            "a blurry picture of a small {} next to a bicycle in the park", "an old {}"]
WORDS = ["dog", "cat", "sneaker", "handbag", "red car", "mountain lake", "bowl of soup", "guitar"]


def make_models(name: str) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    import open_clip

    from projects.clip_pseudo.config import named_config, to_open_clip_cfg
    from projects.clip_pseudo.model import ClipModel
    from projects.clip_pseudo.openclip_io import to_open_clip_state_dict

    cfg = named_config(name)
    ours = ClipModel(cfg)
    # open_clip's factory for its built-in names; the same CLIP class directly for our small sizes
    theirs = open_clip.CLIP(**to_open_clip_cfg(cfg)) if name in ("tiny", "micro") else \
        open_clip.create_model(name, pretrained=None)
    theirs.load_state_dict(to_open_clip_state_dict(ours.state_dict()))
    return ours.train(), theirs.train(), cfg.image_size


def make_batch(batch: int, size: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=context)
    texts = [CAPTIONS[i % len(CAPTIONS)].format(WORDS[i % len(WORDS)]) for i in range(batch)]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)), tokenizer(texts)


@contextlib.contextmanager
def full_context():
    """Switch off our end-of-text truncation (the text tower then runs all positions)."""
    from projects.clip_pseudo import model as model_mod

    saved = model_mod.eot_length
    model_mod.eot_length = lambda tokens: tokens.shape[1]
    try:
        yield
    finally:
        model_mod.eot_length = saved


def step_fn(model: torch.nn.Module, kind: str, images, tokens, dtype) -> Callable[[], float]:
    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> float:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            if kind == "open_clip":
                img, txt, scale = model(images, tokens)
                loss = loss_fn(img, txt, scale.exp())
            else:
                out = model(images, tokens)
                loss = loss_fn(out.image_features, out.text_features, out.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def measure(step: Callable[[], float], steps: int, batch: int, ctx=contextlib.nullcontext) -> tuple[float, float]:
    with ctx():
        step()  # warm-up: allocator, kernels, optimizer state
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return batch * steps / wall, batch * steps / cpu


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip config name (or tiny)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--json", default=RESULTS)
    args = parser.parse_args(argv)

    ours, theirs, size = make_models(args.model)
    context = 77 if args.model not in ("tiny", "micro") else ours.cfg.context_length
    images, tokens = make_batch(args.batch_size, size, context)
    eot = int(tokens.argmax(-1).max()) + 1
    results: dict[str, dict[str, Any]] = {}
    for dtype in args.precisions.split(","):
        variants = {
            "corefm": (step_fn(ours, "corefm", images, tokens, dtype), contextlib.nullcontext),
            "corefm, full context": (step_fn(ours, "corefm", images, tokens, dtype), full_context),
            "open_clip": (step_fn(theirs, "open_clip", images, tokens, dtype), contextlib.nullcontext),
        }
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for name, (step, ctx) in variants.items():
                runs[name].append(measure(step, args.steps, args.batch_size, ctx))
        best = {k: (max(r[0] for r in v), max(r[1] for r in v)) for k, v in runs.items()}
        results[dtype] = {"runs": runs, "best_samples_per_s": {k: v[0] for k, v in best.items()},
                          "best_samples_per_cpu_s": {k: v[1] for k, v in best.items()},
                          "ratio_vs_open_clip": best["corefm"][0] / best["open_clip"][0],
                          "cpu_ratio_vs_open_clip": best["corefm"][1] / best["open_clip"][1]}

    print(f"\n{args.model}, batch {args.batch_size} ({size}px images, captions of <= {eot} of {context} tokens), "
          f"fwd+bwd+AdamW, {args.steps} timed steps after 1, best of {args.repeats}\n")
    print("| precision | model | samples/s | ratio vs open_clip | samples per CPU-s | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for dtype, res in results.items():
        ref, ref_cpu = res["best_samples_per_s"]["open_clip"], res["best_samples_per_cpu_s"]["open_clip"]
        for name, value in res["best_samples_per_s"].items():
            cpu = res["best_samples_per_cpu_s"][name]
            print(f"| {dtype} | {name} | {value:.1f} | {value / ref:.2f}x | {cpu:.1f} | {cpu / ref_cpu:.2f}x |")
    out = {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "caption_tokens_max": eot,
           "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                       "threads": torch.get_num_threads()},
           "load_average_1m": os.getloadavg()[0], "results": results}
    path = args.json.format(model=args.model.lower().replace("-", "_"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nwrote {path}")
    from benchmarks._chart import write_chart  # the picture beside the JSON

    write_chart("clip_speed", out, path)
    return out


if __name__ == "__main__":
    main()
