"""The training loop on ``deepspeed.initialize``: task-agnostic, resumable, interruptible.

One call, :func:`train`, runs on every rank (launched by :mod:`launch.runner`). Per optimizer
step it draws ``grad_accum`` micro-batches from the resumable shard loader, checks the loss is
finite on every rank, and lets DeepSpeed do backward, clipping, ZeRO and the AdamW step.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist

from corefm.data import build_loader
from corefm.errors import TrainingError
from corefm.train import checkpoint as ckpt
from corefm.train.build import build_task
from corefm.train.config import Recipe, recipe_to_dict
from corefm.train.ds_config import build_ds_config
from corefm.train.evaluate import all_sum, evaluate, to_engine
from corefm.train.meters import Throughput, cluster_peak, count_flops
from corefm.train.monitor import Monitor
from corefm.train.optim import build_optimizer
from corefm.train.schedule import build_scheduler


class _StopFlag:
    """SIGTERM/SIGINT ask for a checkpoint at the next step boundary instead of dying mid-step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum


def train(recipe: Recipe) -> dict[str, Any]:
    """Run (or resume) the recipe to ``train.max_steps``; returns the final metrics (rank 0's)."""
    if not torch.cuda.is_available():
        # DeepSpeed's CPU shared-memory op only speeds up inference_all_reduce (inference
        # tensor parallelism), which training never calls; skipping it saves a ~40 s compile on
        # every new machine or venv. DeepSpeed keeps this dict editable for that purpose.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    run_dir = Path(recipe.run_dir)
    ckpt_root = run_dir / "checkpoints"
    if rank == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        ckpt.clean_partial(ckpt_root)
    dist.barrier()
    cfg = recipe.train
    config_dict = recipe_to_dict(recipe)
    task = build_task(recipe)
    optimizer = build_optimizer(task, recipe.optim)
    scheduler = build_scheduler(optimizer, recipe.schedule, cfg.max_steps)
    engine, _, _, _ = deepspeed.initialize(model=task, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=build_ds_config(recipe))
    dtype = torch.bfloat16 if recipe.deepspeed.precision == "bf16" else torch.float32

    step, data_state, last = 0, None, ckpt.latest_checkpoint(ckpt_root)
    if last is not None and recipe.checkpoint.resume == "auto":
        meta, state = ckpt.load(engine, last, world)
        step, data_state = meta["step"], state["data"]
    else:
        torch.manual_seed(cfg.seed * 1000 + rank)  # per-rank randomness (dropout) after the shared init
    loader = build_loader(recipe.data.train, recipe.data, rank=rank, world_size=world,
                          batch_size=cfg.micro_batch_size, map_fn=task.sample_transform(True),
                          collate_fn=task.collate, state=data_state)
    monitor = Monitor(recipe.log, run_dir, cfg.max_steps, step, config_dict, enabled=rank == 0)
    if rank == 0:
        (run_dir / "recipe.json").write_text(json.dumps(config_dict, indent=2))
        monitor.print(f"corefm: {recipe.model_name}/{recipe.task_name}, {world} rank(s), "
                      f"ZeRO-{recipe.deepspeed.zero_stage}, {recipe.deepspeed.precision}, "
                      f"{sum(getattr(p, 'ds_numel', p.numel()) for p in task.parameters()):,} parameters"
                      + (f", resumed from {last.name}" if step else ""))
    meter = Throughput(cluster_peak(dtype))
    stop, flops_per_micro, nonfinite_run, last_loss = _StopFlag(), 0, 0, None
    metrics: dict[str, Any] = {}
    window: dict[str, float] = {}
    it = iter(loader)

    saved_step = step if last is not None else -1

    def save() -> None:
        nonlocal saved_step
        if saved_step == step:
            return
        saved_step = step
        meta = {"step": step, "world_size": world, "recipe": config_dict, "time": time.time()}
        ckpt.save(engine, ckpt_root, step, {"data": loader.state_dict()}, meta, recipe.checkpoint.keep_last)

    while step < cfg.max_steps:
        done = 0
        while done < cfg.grad_accum:
            batch = to_engine(next(it), dtype)
            if flops_per_micro:
                out = engine(batch)
            else:  # count once; backward costs about twice the forward
                out, fwd_flops = count_flops(lambda: engine(batch))
                flops_per_micro = 3 * fwd_flops
            loss = out["loss"]
            names = [k for k in sorted(out) if k not in ("loss", "num_tokens") and out[k].numel() == 1]
            value = float(loss.detach())
            finite = bool(torch.isfinite(torch.tensor(value)))
            vals = [0.0 if finite else 1.0, value if finite else 0.0, float(out.get("num_tokens", 0))]
            vals += [float(out[k].detach()) if finite else 0.0 for k in names]
            red = all_sum(vals)
            if red[0] > 0:  # some rank saw a non-finite loss: every rank drops this micro-batch
                nonfinite_run += 1
                msg = f"non-finite loss on {int(red[0])} rank(s) at step {step}"
                if cfg.on_nonfinite == "stop" or nonfinite_run >= cfg.max_consecutive_nonfinite:
                    raise TrainingError(msg + (f" ({nonfinite_run} in a row)" if nonfinite_run > 1 else "")
                                        + f"; train.on_nonfinite={cfg.on_nonfinite}")
                monitor.print(f"warning: {msg}; micro-batch skipped")
                continue
            nonfinite_run = 0
            engine.backward(loss)
            engine.step()
            done += 1
            window["loss"] = window.get("loss", 0.0) + red[1] / world
            for k, v in zip(names, red[3:]):
                window[k] = window.get(k, 0.0) + v / world
            window["_n"] = window.get("_n", 0) + 1
            meter.update(cfg.micro_batch_size * world, red[2], flops_per_micro * world)
        step += 1
        last_loss = red[1] / world
        monitor.advance(1, {"loss": last_loss})
        if step % recipe.log.every == 0 or step == cfg.max_steps:
            n = window.pop("_n")
            metrics = {k: v / n for k, v in window.items()}
            metrics.update(lr=scheduler.get_last_lr()[0], **meter.read(), last_loss=last_loss)
            health = loader.stats()  # this rank's view; a warning names each bad shard as it is hit
            metrics.update({k: v for k, v in health.items() if k.startswith("skipped") and v})
            monitor.log(step, metrics)
            window.clear()
            meter.reset()
        if recipe.eval.every and step % recipe.eval.every == 0 and step < cfg.max_steps and recipe.data.val:
            with meter.paused():
                monitor.log(step, evaluate(engine, task, recipe, dtype), kind="eval")
        if all_sum([float(stop.signal is not None)])[0] > 0:
            save()
            monitor.print(f"corefm: stopped by signal at step {step}; checkpoint saved; "
                          "run the same command again to resume")
            monitor.close()
            return {"step": step, "interrupted": True}
        if recipe.checkpoint.every and step % recipe.checkpoint.every == 0 and step < cfg.max_steps:
            with meter.paused():
                save()
    save()
    final = {"step": step, "loss": metrics.get("loss"), "last_loss": last_loss}
    if last_loss is None and (run_dir / "final.json").is_file():
        # A finished run started again trains no step and only re-evaluates: keep the training
        # losses it recorded instead of overwriting them with nothing.
        previous = json.loads((run_dir / "final.json").read_text())
        final.update(loss=previous.get("loss"), last_loss=previous.get("last_loss"))
    if recipe.data.val:
        final["eval"] = evaluate(engine, task, recipe, dtype)
        monitor.log(step, final["eval"], kind="eval")
    if recipe.checkpoint.export_final and rank == 0:
        from corefm.train.export import export_checkpoint

        final["export"] = str(export_checkpoint(ckpt.latest_checkpoint(ckpt_root), task, run_dir / "model.safetensors"))
    dist.barrier()
    if rank == 0:
        ckpt.write_text_atomic(run_dir / "final.json", json.dumps(final, indent=2))
    monitor.close()
    return final
