"""The GPU check's training half: every project's small recipe through ``corefm train`` on one device.

    python benchmarks/gpu/train_check.py --data .gpucheck/data [--out runs/gpucheck] [--steps 50]
        [--stages 1,2,3] [--projects vit,byteformer,openelm,clip,sam_clip] [--expect-device cuda]

For each project and ZeRO stage: a bf16 run of ``--steps`` steps (one process, NCCL on a GPU, gloo
on a CPU), checked for: exit 0, the start line naming the expected device and backend, the
training loss falling (last logged window below the first), held-out metrics in final.json, a
consolidated model.safetensors, and a ``corefm release`` folder. ``--parallel`` runs go at once
(one GPU holds these small models easily), so the check fits in minutes. SAM-CLIP also runs its
distillation stage with both teachers online: the SAM teacher its own ZeRO-1 run exported, the
CLIP teacher the CLIP project's ZeRO-1 release.

Beside them the resume check: OpenELM with ``train.deterministic: true``, killed with SIGKILL (the
whole process group, as a node dying) right after its mid-run checkpoint and started again, must
log every per-step loss and the final evaluation exactly as an uninterrupted run does.

Prints a markdown table and writes JSON. Exit 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_train.json"
# Past the deadline (--deadline, or SIGTERM/SIGINT to this script) no run starts and every running
# one is killed with its process group: the runs live in sessions of their own (as a node's job
# would), so a signal to this script alone would leave them holding the GPU.
STOP = threading.Event()
LIVE: set[subprocess.Popen] = set()
LIVE_LOCK = threading.Lock()


def stop_all(reason: str) -> None:
    if not STOP.is_set():
        print(f"train_check: {reason}: stopping every run", file=sys.stderr, flush=True)
    STOP.set()
    with LIVE_LOCK:
        for proc in LIVE:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class Run:
    project: str
    recipe: str
    sets: dict[str, Any]
    stage: int
    run_dir: Path
    name: str = ""
    proc: subprocess.Popen | None = None
    started: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)


def corefm(*args: str) -> list[str]:
    return [sys.executable, "-m", "corefm.cli", *args]


def train_command(run: Run) -> list[str]:
    sets = {"run_dir": str(run.run_dir), "deepspeed.zero_stage": run.stage, "deepspeed.precision": "bf16",
            "log.progress": "false", "log.wandb": "false", **run.sets}
    return corefm("train", str(ROOT / run.recipe), "--nproc", "1", *sum((["--set", f"{k}={v}"] for k, v in sets.items()), []))


def start(run: Run, env: dict[str, str]) -> Run:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run.run_dir / "train.log", "a")
    run.started = time.time()
    with LIVE_LOCK:
        if STOP.is_set():  # past the deadline: never started (finish reports it)
            return run
        run.proc = subprocess.Popen(train_command(run), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        LIVE.add(run.proc)
    return run


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        rec = json.loads(line)
        if rec["kind"] == "train":
            out[rec["step"]] = rec["loss"]
    return out


def finish(run: Run, expect: str) -> dict[str, Any]:
    res: dict[str, Any] = {"project": run.project, "name": run.name, "zero": run.stage}
    if run.proc is None:
        return res | {"rc": None, "seconds": 0, "first_loss": None, "last_loss": None, "eval": None,
                      "checks": {"started before the deadline": False}, "ok": False}
    code = run.proc.wait()
    with LIVE_LOCK:
        LIVE.discard(run.proc)
    log = (run.run_dir / "train.log").read_text()
    res |= {"rc": code, "seconds": round(time.time() - run.started, 1)}
    steps = losses(run.run_dir)
    res["first_loss"], res["last_loss"] = (steps[min(steps)], steps[max(steps)]) if steps else (None, None)
    final = run.run_dir / "final.json"
    res["eval"] = json.loads(final.read_text()).get("eval") if final.is_file() else None
    last = [json.loads(l) for l in (run.run_dir / "metrics.jsonl").read_text().splitlines()
            if '"kind": "train"' in l][-1:] if (run.run_dir / "metrics.jsonl").is_file() else []
    for key in ("samples_per_s", "tokens_per_s", "mfu"):
        if last and key in last[0]:
            res[key] = last[0][key]
    checks = {"exit 0": code == 0, f"on {expect}": f" on {expect}," in log,
              "loss falls": bool(steps) and res["last_loss"] < res["first_loss"],
              "eval": bool(res["eval"]), "export": (run.run_dir / "model.safetensors").is_file()}
    if code == 0 and not STOP.is_set():
        rel = subprocess.run(corefm("release", str(run.run_dir), "--out", str(run.run_dir / "release")), cwd=ROOT,
                             capture_output=True, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
        checks["release"] = rel.returncode == 0 and any((run.run_dir / "release").iterdir())
    else:
        checks["release"] = False
        res["log_tail"] = log[-2000:]
    res["checks"] = checks
    res["ok"] = all(checks.values())
    return res


def project_runs(args, project: str, out: Path) -> list[Run]:
    data, steps = Path(args.data), args.steps
    common = {"train.max_steps": steps, "log.every": max(1, steps // 5), "schedule.warmup_steps": max(1, steps // 5),
              "checkpoint.every": 0, "eval.every": 0, "eval.max_batches": 4, "data.num_workers": 2}
    fashion = {"data.train": data / "fmnist-pl/train", "data.val": data / "fmnist-pl/val", **common}
    table = {
        "vit": ("projects/vit/configs/digits_tiny.yaml",
                {"data.train": data / "digits/train", "data.val": data / "digits/val", **common}),
        "byteformer": ("projects/byteformer/configs/fashion_tiff.yaml", fashion),
        "openelm": ("projects/openelm/configs/shakespeare_demo.yaml",
                    {"data.train": data / "shakespeare/train", "data.val": data / "shakespeare/val", **common}),
        "clip": ("projects/clip_pseudo/configs/fashion_tiny.yaml", fashion),
        "sam_clip": ("projects/sam_clip/configs/fashion_sam_teacher.yaml", fashion),
    }
    recipe, sets = table[project]
    return [Run(project, recipe, dict(sets), stage, out / f"{project}_z{stage}", name=Path(recipe).stem)
            for stage in args.stages]


def sam_clip_distill(args, out: Path) -> Run:
    """Both teachers online: the SAM teacher from sam_clip_z1 (exported), the CLIP one from clip_z1's release."""
    sam = out / "sam_clip_z1" / "sam.pth"
    subprocess.run(corefm("sam-clip", "export-sam", str(out / "sam_clip_z1"), str(sam)), cwd=ROOT, check=True,
                   capture_output=True)
    data = Path(args.data)
    sets = {"train.max_steps": args.steps, "log.every": max(1, args.steps // 5), "eval.max_batches": 4,
            "schedule.warmup_steps": max(1, args.steps // 5),
            "data.train": data / "fmnist-pl/train", "data.val": data / "fmnist-pl/val", "data.resampled": "false",
            "data.weights": "[]", "data.num_workers": 2, "model.init_checkpoint": "", "model.sam_checkpoint": sam,
            "task.clip_source": "online", "task.sam_source": "online", "task.clip_teacher": out / "clip_z1" / "release",
            "task.sam_teacher": sam}
    return Run("sam_clip", "projects/sam_clip/configs/fashion_distill.yaml", sets, 2, out / "sam_clip_distill_z2",
               name="fashion_distill (teachers online)")


def distill_after(args, out: Path, env: dict[str, str], expect: str, needs: list[Future]) -> dict[str, Any]:
    """The distillation run, once the runs that make its teachers have passed."""
    run = Run("sam_clip", "projects/sam_clip/configs/fashion_distill.yaml", {}, 2, out / "sam_clip_distill_z2",
              name="fashion_distill (teachers online)")
    if not all(f.result()["ok"] for f in needs):
        return finish(run, expect) | {"checks": {"teacher runs passed": False}}
    try:
        run = sam_clip_distill(args, out)
    except subprocess.CalledProcessError as e:
        tail = (e.stderr or b"").decode(errors="replace")[-2000:]
        return finish(run, expect) | {"checks": {"export-sam": False}, "log_tail": tail}
    return finish(start(run, env), expect)


def resume_check(args, out: Path, env: dict[str, str], expect: str) -> dict[str, Any]:
    """Uninterrupted and killed-then-resumed deterministic OpenELM runs must log the same losses."""
    data, steps = Path(args.data), args.resume_steps
    sets = {"train.max_steps": steps, "log.every": 1, "checkpoint.every": steps // 2, "eval.max_batches": 4,
            "train.deterministic": "true", "data.train": data / "shakespeare/train",
            "data.val": data / "shakespeare/val", "data.num_workers": 2}
    recipe = "projects/openelm/configs/shakespeare_demo.yaml"
    straight = start(Run("openelm", recipe, sets, 2, out / "resume_straight"), env)
    killed = start(Run("openelm", recipe, sets, 2, out / "resume_killed"), env)
    marker, want = killed.run_dir / "checkpoints" / "latest", f"step_{steps // 2:08d}"
    while killed.proc is not None and not (marker.is_file() and marker.read_text().strip() >= want) \
            and killed.proc.poll() is None:
        time.sleep(0.05)
    if killed.proc is not None:
        os.killpg(killed.proc.pid, signal.SIGKILL)
        killed.proc.wait()
    killed_at = max(losses(killed.run_dir) or {0: 0})
    again = start(Run("openelm", recipe, sets, 2, killed.run_dir), env)
    a, b = finish(straight, expect), finish(again, expect)
    la, lb = losses(straight.run_dir), losses(killed.run_dir)
    exact = bool(la) and la == lb and a["eval"] == b["eval"]
    return {"killed_after_step": killed_at, "steps": steps, "exact": exact, "straight_ok": a["ok"],
            "resumed_ok": b["ok"], "resumed": "resumed from step_" in (killed.run_dir / "train.log").read_text(),
            "differing_steps": sorted(k for k in set(la) | set(lb) if la.get(k) != lb.get(k))[:10],
            "ok": exact and a["ok"] and b["ok"] and killed_at < steps}


def table(results: list[dict[str, Any]], resume: dict[str, Any] | None) -> str:
    lines = ["| project | recipe | ZeRO | loss first -> last | held-out | speed (last window) | s | checks |",
             "|---|---|---:|---|---|---|---:|---|"]
    for r in results:
        ev = r["eval"] or {}
        metric = next((f"{k} {ev[k]:.3f}" for k in ("accuracy", "perplexity", "zero_shot_top1", "miou_gt_box",
                                                    "miou_target_box", "clip_cosine") if k in ev), "-")
        speed = (f"{r['tokens_per_s']:,.0f} tok/s" if "tokens_per_s" in r else
                 f"{r.get('samples_per_s', 0):,.0f} samples/s") + (f", MFU {100 * r['mfu']:.2g}%" if "mfu" in r else "")
        loss = f"{r['first_loss']:.3f} -> {r['last_loss']:.3f}" if r["first_loss"] is not None else "-"
        bad = [k for k, v in r["checks"].items() if not v]
        lines.append(f"| {r['project']} | {r['name']} | {r['zero']} | {loss} | {metric} | {speed} | {r['seconds']} | "
                     + ("all pass" if not bad else "FAIL: " + ", ".join(bad)) + " |")
    if resume:
        lines += ["", f"kill -9 after the step-{resume['steps'] // 2} checkpoint (the run had logged step "
                  f"{resume['killed_after_step']}), then resumed: per-step losses and final eval "
                  + ("identical to the uninterrupted run" if resume["exact"] else
                     f"DIFFER from the uninterrupted run (steps {resume['differing_steps']})")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT / ".gpucheck" / "data"))
    p.add_argument("--out", default=str(ROOT / "runs" / "gpucheck"))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--resume-steps", type=int, default=40)
    p.add_argument("--stages", default="1,2,3")
    p.add_argument("--projects", default="vit,byteformer,openelm,clip,sam_clip")
    p.add_argument("--expect-device", default="cuda", help="the device every run must report (cuda or cpu)")
    p.add_argument("--no-resume", dest="resume", action="store_false")
    p.add_argument("--parallel", type=int, default=8, help="runs at once (they share the one GPU)")
    p.add_argument("--json", default=str(RESULTS))
    p.add_argument("--deadline", type=float, default=0,
                   help="seconds after which no run starts and running ones are killed (0: none)")
    args = p.parse_args(argv)
    if args.deadline > 0:
        timer = threading.Timer(args.deadline, stop_all, args=(f"deadline of {args.deadline:.0f} s",))
        timer.daemon = True
        timer.start()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _: stop_all(signal.Signals(signum).name))
    args.stages = [int(s) for s in args.stages.split(",")]
    projects = args.projects.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "vit" in projects and not (Path(args.data) / "digits/val/dataset.json").is_file():
        from corefm.data.image_sets import build

        build("digits", Path(args.data) / "digits")
    # The GPU does the arithmetic; one thread per run keeps many concurrent runs off each other's cores.
    env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    expect = f"{args.expect_device} ({'nccl' if args.expect_device == 'cuda' else 'gloo'})"
    started = time.time()
    # Stage-1 runs first, the two the SAM-CLIP distillation reads (clip, sam_clip) at their head, so that
    # it starts as soon as both are done, beside the rest.
    order = {"clip": 0, "sam_clip": 1}
    runs = sorted((r for project in projects for r in project_runs(args, project, out)),
                  key=lambda r: (r.stage, order.get(r.project, 2)))
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        resume_job = pool.submit(resume_check, args, out, env, expect) \
            if args.resume and "openelm" in projects else None
        jobs = {(r.project, r.stage): pool.submit(lambda r: finish(start(r, env), expect), r) for r in runs}
        if {("clip", 1), ("sam_clip", 1)} <= set(jobs):
            jobs[("sam_clip", "distill")] = pool.submit(distill_after, args, out, env, expect,
                                                        [jobs[("clip", 1)], jobs[("sam_clip", 1)]])
        results = []
        for job in as_completed(jobs.values()):
            results.append(job.result())
            print(table([results[-1]], None).splitlines()[-1], flush=True)
        results = [jobs[k].result() for k in jobs]  # the table in a fixed order
        resume = resume_job.result() if resume_job is not None else None
    report = table(results, resume)
    print("\n" + report)
    ok = all(r["ok"] for r in results) and (resume is None or resume["ok"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"runs": results, "resume": resume, "ok": ok, "table": report,
                                           "seconds": round(time.time() - started, 1)}, indent=1, default=str))
    print(f"\n{'all checks pass' if ok else 'SOME CHECKS FAILED'} ({time.time() - started:.0f} s); wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
