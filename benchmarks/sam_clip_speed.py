"""SAM-CLIP merged model vs the two-teacher pipeline: parameters and measured latency, one run.

Per image the work is what both pipelines deliver: a CLIP image embedding (zero-shot ready) and
SAM masks for one point prompt and one box prompt. Two teachers: the open_clip CLIP teacher's
image tower (at its own resolution) + the SAM teacher (encoder + 2 batched decoder passes). Merged:
one backbone forward, the CLIP head and the same 2 decoder passes. The CLIP text tower (class-name
embeddings, computed once per label set) is the same in both pipelines and is counted apart.
Timings alternate the two pipelines, take the median of each repeat and the best repeat.
``encoders_only_*`` times the image encoders alone (the merged backbone + CLIP head + SAM neck vs
the CLIP image tower + SAM's image encoder), i.e. without the prompt decoding both pipelines share.

    .venv/bin/python benchmarks/sam_clip_speed.py --student runs/sam_clip/resolution
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", required=True, help="sam_clip run or release folder")
    p.add_argument("--clip-teacher", default="", help="default: the run's task.clip_teacher")
    p.add_argument("--sam-teacher", default="", help="default: the run's task.sam_teacher")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out", default="benchmarks/results/sam_clip_speed.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from projects.sam_clip.evaluate import load_student, recipe_task, teacher_spec
    from projects.sam_clip.teachers import ClipTeacher, SamTeacher

    path = Path(args.student)
    recipe, student = load_student(path)
    written = recipe_task(path)
    clip_t = ClipTeacher(teacher_spec(path, args.clip_teacher, written.get("clip_teacher", ""), "clip_teacher"))
    sam_t = SamTeacher(teacher_spec(path, args.sam_teacher, written.get("sam_teacher", ""), "sam_teacher/sam.pth"))
    size, tsize = student.cfg.img_size, clip_t.image_size[0]
    clip_size = recipe.task.clip_image_size or size

    def merged(images, pts, labels, boxes):
        tokens = student.encode(images)
        clip = student.clip_embed(tokens if clip_size == size else
                                  student.encode(torch.nn.functional.interpolate(images, size=clip_size)))
        emb = student.image_embeddings(tokens)
        student.decode_batch(emb, pts, labels)  # the same batched decoding as the SAM teacher's predict
        student.decode_batch(emb, boxes=boxes)
        return clip

    def teachers(images, pts, labels, boxes, clip_images):
        clip = clip_t.encode_image(clip_images)
        sam_t.predict(images, pts, labels, boxes)
        return clip

    def merged_encoders(images):
        tokens = student.encode(images)
        return student.clip_embed(tokens), student.image_embeddings(tokens)

    def teacher_encoders(images, clip_images):
        return clip_t.encode_image(clip_images), sam_t.sam.image_encoder(images)

    results = {"student": str(path), "clip_teacher": clip_t.spec, "sam_teacher": sam_t.spec,
               "threads": torch.get_num_threads(),
               "params": {"merged": _count(student), "sam_teacher": _count(sam_t.sam),
                          "clip_teacher_image_tower": _count(clip_t.model.visual),
                          "clip_teacher_total": _count(clip_t.model)},
               "latency_ms": {}}
    prm = results["params"]
    prm["two_teachers_image_side"] = prm["sam_teacher"] + prm["clip_teacher_image_tower"]
    prm["text_tower_shared"] = prm["clip_teacher_total"] - prm["clip_teacher_image_tower"]
    prm["ratio_merged_vs_two_teachers"] = prm["merged"] / prm["two_teachers_image_side"]
    with torch.inference_mode():
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            images = torch.randn(bs, 3, size, size)
            clip_images = torch.randn(bs, 3, tsize, tsize)
            pts = torch.rand(bs, 1, 1, 2) * size
            labels = torch.ones(bs, 1, 1, dtype=torch.int64)
            boxes = torch.tensor([[[2.0, 2.0, size - 2.0, size - 2.0]]]).expand(bs, 1, 4)
            best = {k: float("inf") for k in ("merged", "two_teachers", "merged_enc", "two_teachers_enc")}
            for _ in range(args.repeats):
                for name, fn in (("merged", lambda: merged(images, pts, labels, boxes)),
                                 ("two_teachers", lambda: teachers(images, pts, labels, boxes, clip_images)),
                                 ("merged_enc", lambda: merged_encoders(images)),
                                 ("two_teachers_enc", lambda: teacher_encoders(images, clip_images))):
                    fn()  # warm-up
                    times = []
                    for _ in range(args.iters):
                        t = time.perf_counter()
                        fn()
                        times.append(time.perf_counter() - t)
                    best[name] = min(best[name], statistics.median(times) * 1000 / bs)
            results["latency_ms"][f"batch_{bs}"] = {"merged_per_image": best["merged"],
                                                    "two_teachers_per_image": best["two_teachers"],
                                                    "speedup": best["two_teachers"] / best["merged"],
                                                    "encoders_only_merged_per_image": best["merged_enc"],
                                                    "encoders_only_two_teachers_per_image": best["two_teachers_enc"],
                                                    "encoders_only_speedup": best["two_teachers_enc"] / best["merged_enc"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository root
    from benchmarks._chart import write_chart  # the picture beside the JSON

    write_chart("sam_clip_speed", results, args.out)
    return results


if __name__ == "__main__":
    main()
