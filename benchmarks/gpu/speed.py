"""The GPU check's speed half: corefm against its peers, side by side in one run, on one GPU.

    python benchmarks/gpu/speed.py [--device cuda] [--quick] [--json benchmarks/results/gpu_speed.json]
        [--sections openelm,clip,loader,compile] [--merge EARLIER.json]

Sections run in the order given and each is saved as it ends (a run stopped by SIGINT keeps the
finished ones and the rounds of the one in progress); ``--merge`` keeps an earlier file's sections,
so a second, shorter call can add the ``compile`` rows.

Measured (bf16; each number a median over rounds in which the rivals take turns):
* OpenELM-270M (the real layer-wise-scaled model, seq 2048) training tokens/s and MFU against
  the bf16 matmul peak measured here, beside corefm's OpenELM and transformers' LlamaForCausalLM
  (sdpa) of one uniform shape (16 layers, d 1280, GQA 20/5 heads of 64, FFN 3840: equal FLOPs per
  token), each eager and under torch.compile. Full steps: forward, loss, backward, fused AdamW.
* KV-cached greedy decoding, new tokens/s at batch 1 and 32 (128-token prompt, 128 new tokens):
  corefm's ``generate`` against transformers' ``generate`` on the same uniform shape.
* CLIP ViT-B/16 training samples/s against open_clip's own model (same weights, open_clip's
  ClipLoss, AdamW, bf16 autocast: benchmarks/clip_speed.py's step) at batch 256, with captions at their real lengths (corefm cuts
  the batch after its last end-of-text token, as its data workers do) and at the full 77 tokens.
* corefm's data loader (image-text JPEG shards -> the CLIP task's transform, N workers) in
  samples/s, against the samples/s the CLIP step consumes.

``--device cpu --quick`` runs the same code on small shapes (a smoke run: numbers mean nothing).
Prints markdown tables; writes JSON. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository (corefm, projects)
sys.path.insert(0, os.path.dirname(HERE))  # benchmarks/ (the CPU benchmarks' model builders)

from clip_speed import make_batch, make_models, step_fn  # noqa: E402
from openelm_speed import decode_fn, llama_like, model_flops_per_token, openelm_config  # noqa: E402

from corefm.tasks.causal_lm import CausalLMConfig, CausalLMTask  # noqa: E402
from corefm.train.meters import measure_matmul_peak  # noqa: E402
from projects.openelm.model import OpenELM  # noqa: E402

RESULTS = os.path.join(os.path.dirname(HERE), "results", "gpu_speed.json")
LLAMA, UNIFORM = "transformers Llama (uniform, sdpa)", "corefm OpenELM (uniform)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], int], device: torch.device, iters: int, warmup: int = 2) -> float:
    """Units per second of ``fn`` (which returns the units it did) over ``iters`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    sync(device)
    start, done = time.perf_counter(), 0
    for _ in range(iters):
        done += fn()
    sync(device)
    return done / (time.perf_counter() - start)


PARTIAL: dict[str, list[float]] = {}  # the rounds of the measurement in progress, kept if it is stopped


def rounds(fns: dict[str, Callable[[], float]], n: int) -> dict[str, list[float]]:
    """Each function once per round, in turn; all rates per name."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    PARTIAL.clear()
    PARTIAL.update(out)
    for _ in range(n):
        for name, fn in fns.items():
            out[name].append(fn())
            print(f"  {name}: {out[name][-1]:,.1f}", file=sys.stderr, flush=True)
    return out


# --- OpenELM ----------------------------------------------------------------------------------
def lm_train_step(model: torch.nn.Module, is_llama: bool, batch: int, seq: int, vocab: int,
                  device: torch.device, compiled: bool) -> Callable[[], int]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    tokens = torch.randint(0, vocab, (batch, seq + 1), device=device)
    if is_llama:
        fwd = torch.compile(model) if compiled else model

        def loss() -> torch.Tensor:
            return fwd(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss
    else:
        task = CausalLMTask(CausalLMConfig(z_loss=1e-4), model)
        fwd = torch.compile(task) if compiled else task

        def loss() -> torch.Tensor:
            return fwd({"tokens": tokens})["loss"]

    def step() -> int:
        loss().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch * seq
    return step


def openelm_models(args) -> dict[str, tuple[torch.nn.Module, Any, bool]]:
    """name -> (model, config, is_llama): the real OpenELM-270M, corefm's uniform twin and Llama's."""
    layers, width = (16, 1280) if not args.quick else (2, 128)
    real = openelm_config(layers, width, scaled=True)
    if not args.quick:  # the released OpenELM-270M: layer-wise scaling, FFN widths divisible by 256
        real.ffn_dim_divisor = 256
    uniform = openelm_config(layers, width, scaled=False)
    torch.manual_seed(0)
    return {"corefm OpenELM-270M (layer-wise scaled)": (OpenELM(real), real, False),
            "corefm OpenELM (uniform)": (OpenELM(uniform), uniform, False),
            LLAMA: (llama_like(uniform), uniform, True)}


def openelm_section(args, device: torch.device, peak: float, compiled: bool,
                    into: dict[str, Any] | None = None) -> dict[str, Any]:
    """Training tokens/s and MFU of the three models, eager or under torch.compile; eager runs also
    time decoding. ``into``: an earlier (eager) result whose rows take the compiled numbers."""
    seq, batch = (2048, args.lm_batch) if not args.quick else (64, 2)
    models = openelm_models(args)
    res = into or {"settings": {"layers": models[LLAMA][1].num_transformer_layers, "width": models[LLAMA][1].model_dim,
                                "seq": seq, "batch": batch}, "rows": []}
    rows = {r["model"]: r for r in res["rows"]}
    suffix = "_compiled" if compiled else ""
    train_fns: dict[str, Callable[[], float]] = {}
    for name, (model, cfg, is_llama) in models.items():
        model.to(device, torch.bfloat16).train()
        rows.setdefault(name, {"model": name, "params": sum(p.numel() for p in model.parameters()),
                               "train_flops_per_token": model_flops_per_token(cfg, seq)})
        step = lm_train_step(model, is_llama, batch, seq, cfg.vocab_size, device, compiled)
        train_fns[name] = lambda step=step: timed(step, device, args.iters, warmup=3 if compiled else 2)
    train = rounds(train_fns, args.rounds)
    for name, rates in train.items():
        rate = statistics.median(rates)
        rows[name][f"train_tokens_per_s{suffix}"] = rate
        rows[name][f"mfu{suffix}"] = rate * rows[name]["train_flops_per_token"] / peak
    for row in rows.values():
        # equal FLOPs: model FLOP/s against Llama's (the uniform shapes have the same per-token FLOPs)
        row[f"train_flops_vs_llama{suffix}"] = (row[f"train_tokens_per_s{suffix}"] * row["train_flops_per_token"]
                                                / (rows[LLAMA][f"train_tokens_per_s{suffix}"]
                                                   * rows[LLAMA]["train_flops_per_token"]))
    res[f"train_rounds{suffix}"] = train
    res["rows"] = list(rows.values())
    if not compiled:
        decode_section(args, device, models, rows, res)
    for model, _, _ in models.values():
        model.to("cpu")
    return res


def decode_section(args, device: torch.device, models, rows: dict[str, dict[str, Any]], res: dict[str, Any]) -> None:
    """KV-cached greedy decoding, corefm's generate against transformers', at batch 1 and 32."""
    decode_fns: dict[str, Callable[[], float]] = {}
    prompt, new = (128, 128) if not args.quick else (8, 8)
    for name in (UNIFORM, LLAMA):
        model, cfg, is_llama = models[name]
        model.eval()
        for b in (1, 32):
            fn = decode_fn(model, b, prompt, new, is_llama, device)
            decode_fns[f"{name} decode b{b}"] = lambda fn=fn: timed(fn, device, 1 if args.quick else 3, warmup=1)
    decode = rounds(decode_fns, args.rounds)
    for key, rates in decode.items():
        name, _, what = key.rpartition(" decode ")
        rows[name][f"decode_{what}_tokens_per_s"] = statistics.median(rates)
    for b in ("b1", "b32"):
        ours, theirs = rows[UNIFORM], rows[LLAMA]
        ours[f"decode_{b}_vs_llama"] = ours[f"decode_{b}_tokens_per_s"] / theirs[f"decode_{b}_tokens_per_s"]
    res["settings"].update(prompt=prompt, new_tokens=new)
    res["decode_rounds"] = decode


# --- CLIP --------------------------------------------------------------------------------------
def clip_section(args, device: torch.device) -> dict[str, Any]:
    from projects.clip_pseudo.model import eot_length

    name, batch = ("ViT-B-16", args.clip_batch) if not args.quick else ("tiny", 8)
    ours, theirs, size = make_models(name)
    ours.to(device).train()
    theirs.to(device).train()
    context = 77 if not args.quick else ours.cfg.context_length
    images, tokens = make_batch(batch, size, context)
    images, tokens = images.to(device), tokens.to(device)
    cut = tokens[:, : eot_length(tokens.cpu())]  # what ClipTask.collate hands a GPU run
    steps = {"corefm, real caption lengths": step_fn(ours, "corefm", images, cut, "bf16"),
             "corefm, full 77-token context": step_fn(ours, "corefm", images, tokens, "bf16"),
             "open_clip (always the full context)": step_fn(theirs, "open_clip", images, tokens, "bf16")}
    # step_fn (benchmarks/clip_speed.py: bf16 autocast on the images' device, ClipLoss, AdamW) returns
    # the loss; the timer counts samples.
    runs = rounds({k: (lambda f=f: timed(lambda: (f(), batch)[1], device, args.iters)) for k, f in steps.items()},
                  args.rounds)
    rates = {k: statistics.median(v) for k, v in runs.items()}
    ref = rates["open_clip (always the full context)"]
    ours.to("cpu")
    theirs.to("cpu")
    return {"model": name, "batch": batch, "caption_tokens": int(cut.shape[1]), "context": context,
            "samples_per_s": rates, "vs_open_clip": {k: v / ref for k, v in rates.items()}, "rounds": runs}


def make_image_text_shards(out: str, shards: int, per_shard: int, size: int) -> list[str]:
    """JPEG crops (``size`` px) of scikit-learn's two sample photos with captions, as image-text shards."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from corefm.data import ShardWriter

    photos, rng = load_sample_images(), np.random.default_rng(0)
    words = ["a photo of a temple", "a flower in a garden", "a close-up of petals", "an old building"]
    producer = {"name": "benchmarks.gpu.speed", "version": "1", "args": {"size": size}}
    with ShardWriter(out, max_samples_per_shard=per_shard, producer=producer) as writer:
        for i in range(shards * per_shard):
            photo = photos.images[int(rng.integers(2))]
            side = int(rng.integers(size, min(photo.shape[:2]) + 1))
            y, x = int(rng.integers(photo.shape[0] - side + 1)), int(rng.integers(photo.shape[1] - side + 1))
            buf = io.BytesIO()
            Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size)).save(buf, format="JPEG", quality=90)
            writer.write({"__key__": f"{i:08d}", "jpg": buf.getvalue(), "txt": words[i % len(words)]})
    return sorted(os.path.join(out, f) for f in os.listdir(out) if f.endswith(".tar"))


def loader_section(args, device: torch.device, consumed: float) -> dict[str, Any]:
    from corefm.data import DataConfig, build_loader
    from corefm.train.build import build_task
    from corefm.train.config import parse_recipe

    from dataclasses import asdict

    from projects.clip_pseudo.config import named_config

    image, batch = (224, args.clip_batch) if not args.quick else (28, 8)
    cfg = named_config("ViT-B-16" if not args.quick else "tiny")
    task = build_task(parse_recipe({"model": {"name": "clip", **asdict(cfg)}, "task": {"name": "clip"}}))
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        per_shard = 256 if not args.quick else 16
        urls = make_image_text_shards(tmp, max(args.workers) * 2, per_shard, 256 if not args.quick else 32)
        for workers in args.workers:
            cfg = DataConfig(num_workers=workers, shuffle_buffer=1000 if not args.quick else 0, seed=0)
            loader = build_loader(urls, cfg, rank=0, world_size=1, batch_size=batch,
                                  map_fn=task.sample_transform(True), collate_fn=task.collate,
                                  pin_memory=device.type == "cuda")
            for _ in range(workers + 2):  # workers started, shuffle buffers filled
                next(loader)
            n = 4 if args.quick else 24
            start = time.perf_counter()
            for _ in range(n):
                next(loader)["image"].to(device, non_blocking=True)
            sync(device)
            rates[f"{workers} workers"] = n * batch / (time.perf_counter() - start)
            loader.close()
    return {"image_size": image, "batch": batch, "samples_per_s": rates, "clip_step_consumes": consumed,
            "headroom": {k: v / consumed for k, v in rates.items()}}


# --- report ------------------------------------------------------------------------------------
def tables(res: dict[str, Any]) -> str:
    """Markdown tables of whichever sections were measured."""
    lines = [f"Device: {res['device']}; torch {res['torch']} (CUDA {res['cuda']}); bf16 matmul peak measured "
             f"here {res['peak_bf16_flops'] / 1e12:.1f} TFLOP/s; {res['date']}."]
    if "openelm" in res:
        lines += [""] + openelm_tables(res["openelm"], res["rounds"])
    if "clip" in res:
        clip = res["clip"]
        lines += ["", f"CLIP {clip['model']} training step, batch {clip['batch']}, bf16 autocast, open_clip's ClipLoss "
                  f"(real captions: {clip['caption_tokens']} of {clip['context']} tokens):", "",
                  "| model | samples/s | vs open_clip |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:,.0f} | {clip['vs_open_clip'][k]:.2f}x |" for k, v in clip["samples_per_s"].items()]
    if "loader" in res:
        load = res["loader"]
        lines += ["", f"corefm's loader, {load['image_size']} px JPEG image-text shards through the CLIP task's "
                  f"transform, batch {load['batch']}, against the {load['clip_step_consumes']:,.0f} samples/s the CLIP "
                  "step consumes:", "", "| loader | samples/s | x what the GPU consumes |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:,.0f} | {load['headroom'][k]:.2f}x |" for k, v in load["samples_per_s"].items()]
    lines += [f"\nFAILED: {e}" for e in res.get("errors", [])]
    return "\n".join(lines)


def openelm_tables(lm: dict[str, Any], n_rounds: int) -> list[str]:
    s = lm["settings"]
    lines = [f"OpenELM training, seq {s['seq']}, batch {s['batch']}, bf16, fused AdamW (median of {n_rounds} rounds):",
             "", "| model | params | tokens/s | MFU | vs Llama (FLOP/s) | + compile tokens/s | MFU | vs Llama |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in lm["rows"]:
        cells = [r["model"], f"{r['params'] / 1e6:.1f}M"]
        for suffix in ("", "_compiled"):
            cells += ([f"{r['train_tokens_per_s' + suffix]:,.0f}", f"{100 * r['mfu' + suffix]:.1f}%",
                       f"{r['train_flops_vs_llama' + suffix]:.2f}x"] if f"train_tokens_per_s{suffix}" in r
                      else ["-", "-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    if "prompt" in s:
        lines += ["", f"KV-cached greedy decoding, {s['prompt']}-token prompt, {s['new_tokens']} new tokens, bf16:", "",
                  "| model | batch 1 tok/s | vs generate | batch 32 tok/s | vs generate |", "|---|---:|---:|---:|---:|"]
        for r in lm["rows"]:
            if "decode_b1_tokens_per_s" in r:
                rel = [f"{r['decode_b1_vs_llama']:.2f}x", f"{r['decode_b32_vs_llama']:.2f}x"] \
                    if "decode_b1_vs_llama" in r else ["1.00x", "1.00x"]
                lines.append(f"| {r['model']} | {r['decode_b1_tokens_per_s']:,.0f} | {rel[0]} | "
                             f"{r['decode_b32_tokens_per_s']:,.0f} | {rel[1]} |")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small shapes, one round: a smoke run")
    p.add_argument("--lm-batch", type=int, default=16)
    p.add_argument("--clip-batch", type=int, default=256)
    p.add_argument("--iters", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", default="8,14", help="loader worker counts to try")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    p.add_argument("--sections", default="openelm,clip,loader,compile",
                   help="what to measure, in order (compile: the OpenELM rows under torch.compile)")
    p.add_argument("--merge", default="", help="an earlier results JSON whose sections are kept")
    p.add_argument("--train-json", default="", help="train_check.py's JSON, merged into the output")
    p.add_argument("--json", default=RESULTS)
    args = p.parse_args(argv)
    args.workers = [int(w) for w in str(args.workers).split(",")]
    if args.quick:
        args.iters, args.rounds, args.workers = 2, 1, [1]
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    started = time.time()
    peak = measure_matmul_peak(torch.bfloat16, device=device, seconds=1.0)
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           "torch": torch.__version__, "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d"),
                           "peak_bf16_flops": peak, "rounds": args.rounds, "settings": vars(args) | {"device": str(device)}}
    import transformers

    res["transformers"] = transformers.__version__
    if args.merge:  # sections measured earlier (another call on the same machine kind) are kept
        with open(args.merge) as f:
            res = json.load(f) | {k: res[k] for k in ("device", "torch", "cuda", "transformers")}
        res.pop("errors", None)
        peak = res["peak_bf16_flops"]  # MFU of every row against one peak
    # Each section is saved as soon as it is measured and a failing one is recorded, not fatal: on a
    # lent machine with a hard time limit, what was measured before a stop must survive it.
    measure = {
        "openelm": lambda: openelm_section(args, device, peak, compiled=False),
        "clip": lambda: clip_section(args, device),
        "loader": lambda: loader_section(args, device, res["clip"]["samples_per_s"]["corefm, real caption lengths"]),
        # last: compiling three models is the slowest part; its rows join the eager ones
        "compile": lambda: openelm_section(args, device, peak, compiled=True, into=res.get("openelm")),
    }
    wanted = [name for name in args.sections.split(",") if args.compile or name != "compile"]
    unknown = set(wanted) - set(measure)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; known: {', '.join(measure)}")
    if args.train_json and os.path.isfile(args.train_json):
        with open(args.train_json) as f:
            res["training"] = json.load(f)
        print("Training checks (benchmarks/gpu/train_check.py):\n\n" + res["training"]["table"] + "\n")
    for name in wanted:
        print(f"speed: {name} ...", file=sys.stderr, flush=True)
        try:
            res["openelm" if name == "compile" else name] = measure[name]()
        except KeyboardInterrupt:  # the time box (check.sh's timeout -s INT): keep what was measured
            res.setdefault("errors", []).append(f"{name}: stopped at the time limit")
            res.setdefault("stopped", {})[name] = {k: v for k, v in PARTIAL.items() if v}  # rounds done
            save(res, args.json)
            break
        except Exception as e:  # noqa: BLE001 - recorded in the results and the exit code, the rest still runs
            res.setdefault("errors", []).append(f"{name}: {type(e).__name__}: {e}")
            print(f"speed: {name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        res["seconds"] = time.time() - started
        save(res, args.json)
    print(tables(res))
    print(f"\nwrote {args.json}")
    from benchmarks._chart import write_chart  # the picture beside the JSON

    write_chart("gpu", res, args.json)
    return res


def save(res: dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    sys.exit(1 if main().get("errors") else 0)
