"""The benchmarks' pictures: each result JSON -> a bar chart of ratios against its peer, beside the JSON.

Every benchmark script calls :func:`write_chart` with its kind and result where it writes the JSON;
``benchmarks/charts.py`` redraws every chart from the JSON files already in benchmarks/results/.
A ratio is our rate / the peer's rate from the numbers the JSON holds (per CPU-second where the
benchmark measured CPU time, since the CPU runs share a machine; wall-clock otherwise).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from corefm.viz.charts import Section, ratio_chart

Chart = tuple[str, list[Section], str]  # title, sections, note


def _machine(meta: dict) -> str:
    bits = [str(meta[k]) for k in ("device", "machine") if meta.get(k)]
    cpus = meta.get("cpus")
    torch = [f"torch {meta['torch']}"] if meta.get("torch") else []
    return ", ".join(bits + ([f"{cpus} CPUs"] if cpus else []) + torch)


def byteformer_speed(r: dict) -> Chart:
    rows = r["side_by_side"]
    sections = []
    for setting in dict.fromkeys(row["setting"] for row in rows):
        ours = next(row for row in rows if row["setting"] == setting and row["model"].startswith("ByteFormer"))
        peer = next(row for row in rows if row["setting"] == setting and row["model"] != ours["model"])
        sections.append(Section(setting, peer["model"], [
            ("train samples/CPU-s", ours["train_samples_cpu_s"] / peer["train_samples_cpu_s"]),
            ("inference samples/CPU-s", ours["infer_samples_cpu_s"] / peer["infer_samples_cpu_s"])]))
    return "ByteFormer (file bytes) vs a ViT on pixels, same width and depth", sections, _machine(r.get("meta", {}))


def catlip_step(r: dict) -> Chart:
    bars = []
    for row in r["rows"]:
        name = f"{row['preset']} {row['image_size']} px, batch {row['batch']}"
        bars += [(f"{name}: wall", row["clip_ms"] / row["catlip_ms"]),
                 (f"{name}: CPU time", row["clip_cpu_ms"] / row["catlip_cpu_ms"])]
    return ("CatLIP training step vs CLIP's (same image tower)", [Section("steps per second", "CLIP", bars)],
            f"{r.get('machine', '')}, torch {r.get('torch', '?')}")


def clip_data(r: dict) -> Chart:
    best = r["best"]
    peer = "open_clip webdataset"
    bars = []
    for name, (rate, cpu_rate) in best.items():
        if name != peer:
            bars += [(f"{name}: samples/s", rate / best[peer][0]), (f"{name}: samples/CPU-s", cpu_rate / best[peer][1])]
    return "CLIP image-text loading (decode, pseudo-labels, tokenise)", [Section("loader throughput", peer, bars)], \
        _machine(r.get("machine", {}))


def clip_speed(r: dict) -> Chart:
    sections = []
    peer = "open_clip"
    for precision, res in r["results"].items():
        wall, cpu = res["best_samples_per_s"], res["best_samples_per_cpu_s"]
        bars = []
        for name in wall:
            if name != peer:
                bars += [(f"{name}: samples/s", wall[name] / wall[peer]),
                         (f"{name}: samples/CPU-s", cpu[name] / cpu[peer])]
        sections.append(Section(f"{precision} training step", peer, bars))
    s = r.get("settings", {})
    return f"CLIP {s.get('model', '')} training step, batch {s.get('batch_size', '?')}", sections, \
        _machine(r.get("machine", {}))


def data_pipeline(r: dict) -> Chart:
    peer = "open_clip-style webdataset"
    wall, cpu = r["best_samples_per_s"], r["best_samples_per_cpu_s"]
    bars = []
    for name in wall:
        if name != peer:
            bars += [(f"{name}: samples/s", wall[name] / wall[peer]), (f"{name}: samples/CPU-s", cpu[name] / cpu[peer])]
    return "Shard loading (corefm.data)", [Section("loader throughput", peer, bars)], _machine(r.get("machine", {}))


def gpu(r: dict) -> Chart:
    sections = []
    clip = r.get("clip")
    if clip:
        peer = next(k for k, v in clip["vs_open_clip"].items() if v == 1.0)
        sections.append(Section(f"CLIP {clip['model']} training step, batch {clip['batch']}", peer.split(" (")[0],
                                [(k, v) for k, v in clip["vs_open_clip"].items() if k != peer]))
    elm = r.get("openelm")
    if elm:
        rows = [row for row in elm["rows"] if row["model"].startswith("corefm")]
        peer = next((row["model"] for row in elm["rows"] if not row["model"].startswith("corefm")), "Llama")
        bars = [(f"{row['model'].removeprefix('corefm ')}: training FLOP/s", row["train_flops_vs_llama"])
                for row in rows]
        for row in rows:
            bars += [(f"{row['model'].removeprefix('corefm ')}: decode {k.split('_')[1]}", row[k])
                     for k in sorted(row) if k.startswith("decode_") and k.endswith("_vs_llama")]
        sections.append(Section("OpenELM", peer, bars))
    loader = r.get("loader")
    if loader:
        sections.append(Section(f"data loading, {loader['image_size']} px", "the CLIP step's consumption",
                                list(loader["headroom"].items())))
    note = f"{r.get('device', '')}, torch {r.get('torch', '?')}, {r.get('date', '')}"
    return f"GPU: {r.get('device', '?')}", sections, note


def mobilevit_attention(r: dict) -> Chart:
    sections = []
    for what, key in (("forward", "fwd"), ("forward + backward", "fwd_bwd")):
        bars = [(f"{row['side']} px ({row['tokens']} tokens)", row[f"mha_{key}_cpu_ms"] / row[f"sep_{key}_cpu_ms"])
                for row in r["rows"]]
        sections.append(Section(f"{what}, per CPU-second", "multi-head attention", bars))
    return "MobileViT-v2 separable attention vs multi-head attention", sections, _machine(r.get("meta", {}))


def openelm_speed(r: dict) -> Chart:
    sections = []
    for dtype in dict.fromkeys(row["dtype"] for row in r["rows"]):
        rows = [row for row in r["rows"] if row["dtype"] == dtype]
        peer = next((row["model"] for row in rows if not row["model"].startswith("corefm")), "Llama")
        bars = []
        for row in rows:
            if row["model"].startswith("corefm"):
                name = row["model"].removeprefix("corefm ")
                bars += [(f"{name}: training", row["train_vs_llama"]),
                         (f"{name}: decode b1", row["decode_b1_vs_llama"]),
                         (f"{name}: decode b8", row["decode_b8_vs_llama"])]
        sections.append(Section(f"{dtype}, tokens per CPU-second", peer, bars))
    return "OpenELM on CPU vs transformers' Llama of the same size", sections, \
        f"{r.get('machine', '')}, torch {r.get('torch', '?')}, transformers {r.get('transformers', '?')}"


def sam_clip_speed(r: dict) -> Chart:
    bars = []
    for batch, row in r["latency_ms"].items():
        b = batch.replace("batch_", "batch ")
        bars += [(f"{b}: whole model", row["speedup"]), (f"{b}: image encoders only", row["encoders_only_speedup"])]
    return "SAM-CLIP: one merged model vs running its two teachers", \
        [Section("images per second", "SAM + CLIP teachers", bars)], f"{r.get('threads', '?')} threads"


CHARTS: dict[str, Callable[[dict], Chart]] = {
    "byteformer_speed": byteformer_speed, "catlip_step": catlip_step, "clip_data": clip_data,
    "clip_speed": clip_speed, "data_pipeline": data_pipeline, "gpu": gpu,
    "mobilevit_attention": mobilevit_attention, "openelm_speed": openelm_speed, "sam_clip_speed": sam_clip_speed,
}


def kind_of(json_path: Path) -> str | None:
    """The chart kind of a results file by its name (clip_speed_vit_b_32.json -> clip_speed), or None."""
    stem = Path(json_path).stem
    return max((k for k in CHARTS if stem == k or stem.startswith(k + "_")), key=len, default=None) \
        if not stem.startswith("gpu_run") else None


def write_chart(kind: str, result: dict[str, Any], json_path: str | os.PathLike) -> Path | None:
    """Draw ``result`` (a ``kind`` benchmark's JSON) into the .png beside ``json_path``; returns the file
    (None, said in one line, when the result holds no ratio yet, e.g. a GPU run stopped early)."""
    title, sections, note = CHARTS[kind](result)
    if not any(s.bars for s in sections):
        print(f"no chart for {json_path}: it holds no measured ratio")
        return None
    out = ratio_chart(sections, Path(json_path).with_suffix(".png"), title, note)
    print(f"wrote {out}")
    return out


def chart_file(json_path: Path) -> Path | None:
    """Redraw one results JSON's chart (None for a file no chart is made of)."""
    kind = kind_of(json_path)
    if kind is None:
        return None
    return write_chart(kind, json.loads(Path(json_path).read_text()), json_path)
