"""The training loop on ``deepspeed.initialize``: task-agnostic, resumable, interruptible, device-aware.

One :class:`Trainer` runs on every rank (launched by :mod:`corefm.train.launcher`). :meth:`Trainer.build`
places the rank on its device (``LOCAL_RANK``'s GPU, or the CPU), opens the process group, builds
task, optimizer, schedule and engine, and resumes from the newest checkpoint; :meth:`Trainer.run`
then repeats :meth:`train_step` (``grad_accum`` micro-batches, moved to the device in one place,
and one optimizer step) with logging, evaluation and checkpoints at their intervals, and
:meth:`finish` writes the final evaluation, export and ``final.json``.

The host reads device values only at log, eval and checkpoint steps (see
:mod:`corefm.train.step_metrics`), so on a GPU the kernel queue never drains between steps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import deepspeed
import torch

from corefm.data import build_loader
from corefm.data.stream import seed_int
from corefm.errors import ConfigError, TrainingError
from corefm.nn import kernels
from corefm.train import checkpoint as ckpt
from corefm.train import recipe_diff
from corefm.train.bounds import clamp_bounded
from corefm.train.build import build_task, compute_dtype, register_external_parameters
from corefm.train.comm import Comm
from corefm.train.config import Recipe, parse_recipe, recipe_to_dict
from corefm.train.ds_config import build_ds_config
from corefm.train.ema import FILE as EMA_FILE, WeightEma
from corefm.train.evaluate import evaluate
from corefm.train.grad_cache import cached_micro_steps
from corefm.train.meters import Throughput, cluster_peak, count_flops
from corefm.train.monitor import Monitor
from corefm.train.optim import build_optimizer
from corefm.train.placement import Placement, rank_placement
from corefm.train.schedule import build_scheduler
from corefm.train.signals import StopFlag
from corefm.train.stall import StallReport
from corefm.train.step_metrics import MetricWindow, NonFiniteGuard


def make_deterministic() -> None:
    """Deterministic kernels for ``train.deterministic``. cuBLAS reads its workspace setting when
    its first handle is made, so this runs before the rank touches its GPU."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def open_process_group(placement: Placement) -> Comm:
    if placement.device.type == "cpu":
        # DeepSpeed's CPU shared-memory op only speeds up inference_all_reduce (inference tensor
        # parallelism), which training never calls; skipping it saves a long compile on every new
        # machine or venv. DeepSpeed keeps this dict editable for that purpose.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=placement.backend)
    return Comm.for_placement(placement)


def place_rank(recipe: Recipe) -> tuple[Placement, Comm]:
    """This rank's device and kernels, then the process group; collective."""
    if recipe.train.deterministic:
        make_deterministic()
    placement = rank_placement()
    runtime = recipe.model_runtime
    choice = kernels.KernelChoice(runtime.attention_backend, runtime.linear_backend)
    choice.check_device(placement.device)
    kernels.select(choice.attention, choice.linear)
    return placement, open_process_group(placement)


def resume_point(recipe: Recipe, comm: Comm) -> tuple[Path | None, dict[str, tuple[Any, Any]]]:
    """Collective: the checkpoint to resume from (None: start afresh) and the honoured recipe changes.

    Rank 0 clears half-written checkpoints first. A change a resume cannot honour raises ConfigError
    on every rank alike, before anything is built."""
    ckpt_root = Path(recipe.run_dir) / "checkpoints"
    if comm.rank == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        ckpt.clean_partial(ckpt_root)
    comm.barrier()
    last = ckpt.latest_checkpoint(ckpt_root)
    if last is None or recipe.checkpoint.resume != "auto":
        return None, {}
    stored = ckpt.read_meta(last)["recipe"]
    try:  # read with today's defaults, so a key added to corefm since does not count as a change
        stored = recipe_to_dict(parse_recipe(stored))
    except ConfigError as e:
        raise ConfigError(f"{last}: its stored recipe no longer parses ({e}); start a new run_dir") from None
    good, bad = recipe_diff.recipe_changes(stored, recipe_to_dict(recipe))
    if bad:
        raise ConfigError(f"{recipe.run_dir} was trained with another recipe, which a resume cannot change: "
                          f"{recipe_diff.describe(bad)}; use the recipe it was trained with, or a new run_dir "
                          f"(a resume may change {', '.join(recipe_diff.HONOURED)})")
    return last, good


class Trainer:
    def __init__(self, recipe: Recipe, placement: Placement, comm: Comm, task: torch.nn.Module, engine: Any,
                 optimizer: torch.optim.Optimizer, scheduler: Any, loader: Any, monitor: Monitor,
                 meter: Throughput, step: int = 0, optimizer_device: torch.device | None = None,
                 stop: StopFlag | None = None) -> None:
        self.recipe, self.placement, self.comm = recipe, placement, comm
        self.task, self.engine, self.optimizer, self.scheduler = task, engine, optimizer, scheduler
        self.loader, self.monitor, self.meter = loader, monitor, meter
        self.cfg = recipe.train
        self.dtype = compute_dtype(recipe)
        self.run_dir = Path(recipe.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.config_dict = recipe_to_dict(recipe)
        self.step = step
        self.saved_step = step if step else -1
        self.window = MetricWindow(placement.device)
        self.guard = NonFiniteGuard(optimizer, placement.device, comm, optimizer_device)
        self.batches = iter(loader)
        self.stop = stop
        self.flops_per_micro = 0
        self.bounds = task.parameter_bounds()
        self.metrics: dict[str, Any] = {}
        self.last_loss: float | None = None
        self.resumed_metrics: dict[str, Any] = {}  # the training metrics the resumed checkpoint recorded
        self.ema: WeightEma | None = None
        self.micro_samples = self.cfg.micro_batch_size
        self.stall = StallReport(0, comm.rank)  # the live one is made by run()

    # --- set-up and resume -------------------------------------------------------------------
    @classmethod
    def build(cls, recipe: Recipe, stop: StopFlag | None = None) -> "Trainer":
        """Collective: device, process group, task, engine, resume, loader, monitor, meters.

        ``stop``: the stop-signal flag, installed by the caller before this slow start-up."""
        cfg = recipe.train
        placement, comm = place_rank(recipe)
        run_dir = Path(recipe.run_dir)
        last, changes = resume_point(recipe, comm)  # a recipe change a resume cannot honour stops here
        task = build_task(recipe)
        optimizer = build_optimizer(task, recipe.optim)
        # The schedule is stepped by the trainer, not by DeepSpeed, so it advances once per training
        # step in every configuration (DeepSpeed skips it on steps its own overflow check drops).
        scheduler = build_scheduler(optimizer, recipe.schedule, cfg.max_steps)
        base_lrs = [group["initial_lr"] for group in optimizer.param_groups]  # from this recipe's optim.lr
        ds_config = build_ds_config(recipe)
        old_meta = ckpt.read_meta(last) if last is not None else {"world_size": comm.world}
        if old_meta["world_size"] != comm.world:  # DeepSpeed decides at build how it will load
            ds_config = ckpt.universal_config(ds_config)
        register_external_parameters(task, recipe.deepspeed.zero_stage)
        engine, _, _, _ = deepspeed.initialize(model=task, optimizer=optimizer, config=ds_config)
        task.place(placement.device)
        step, data_state, world_state, meta, rng_warning = 0, None, None, {}, ""
        if last is not None:
            meta, state = ckpt.load(engine, last, comm.world, placement.device)
            step, rng_warning = meta["step"], state["rng_warning"]
            data_state, world_state = state.get("data"), state.get("data_world")
            if world_state is not None:  # another world size: old ranks' RNG streams do not map onto new ranks
                torch.manual_seed(seed_int("corefm-elastic", cfg.seed, step, comm.rank))
            # The schedule follows from the recipe and the step: rebuilt there, from this recipe's
            # learning rate (the optimizer's restored groups carry the old one).
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["initial_lr"] = base
            scheduler = build_scheduler(optimizer, recipe.schedule, cfg.max_steps, last_step=step)
        else:
            torch.manual_seed(cfg.seed * 1000 + comm.rank)  # per-rank randomness (dropout) after the shared init
        loader = build_loader(recipe.data.train, recipe.data, rank=comm.rank, world_size=comm.world,
                              batch_size=cfg.micro_batch_size, map_fn=task.sample_transform(True),
                              collate_fn=task.collate, state=data_state, world_state=world_state,
                              pin_memory=placement.pin_memory, batches_per_step=cfg.grad_accum)
        config_dict = recipe_to_dict(recipe)
        monitor = Monitor(recipe.log, run_dir, cfg.max_steps, step, config_dict, enabled=comm.rank == 0)
        if comm.rank == 0:
            (run_dir / "recipe.json").write_text(json.dumps(config_dict, indent=2))
            params = sum(getattr(p, "ds_numel", p.numel()) for p in task.parameters())
            monitor.print(f"corefm: {recipe.model_name}/{recipe.task_name}, {comm.world} rank(s) on "
                          f"{placement.device.type} ({placement.backend}), ZeRO-{recipe.deepspeed.zero_stage}, "
                          f"{recipe.deepspeed.precision}, {params:,} parameters"
                          + (f", resumed from {last.name}" if last is not None else ""))
            if world_state is not None:
                monitor.print(world_change_line(old_meta, recipe, comm.world, last, loader.remapped))
                monitor.record(step, "world_size_change", {"from": old_meta["world_size"], "to": comm.world})
            if changes:
                monitor.print(f"corefm: resuming with a changed recipe: {recipe_diff.describe(changes)}")
                monitor.record(step, "recipe_change", {k: list(v) for k, v in changes.items()})
            if rng_warning:
                monitor.print(f"corefm: warning: {rng_warning}")
        meter = Throughput(cluster_peak(compute_dtype(recipe), comm, placement.device))
        offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
        optimizer_device = torch.device("cpu") if offload in ("cpu", "nvme") else None
        trainer = cls(recipe, placement, comm, task, engine, optimizer, scheduler, loader, monitor, meter, step,
                      optimizer_device, stop)
        trainer.resumed_metrics = meta.get("train_metrics") or _recorded_losses(run_dir)
        if recipe.ema.momentum:
            trainer.ema = WeightEma(task, recipe.ema.momentum)  # starts from the (restored) weights
            if last is not None:
                trainer.ema.load(last)
            left = (1 - recipe.ema.momentum) ** cfg.max_steps
            if left > 0.01 and comm.rank == 0:  # no warm-up, as CoreNet's: the start stays in the average
                monitor.print(f"corefm: warning: ema.momentum {recipe.ema.momentum:g} over {cfg.max_steps} steps "
                              f"leaves {left:.0%} of the initial weights (and BatchNorm statistics) in the EMA; "
                              "raise it for a run this short")
        if last is not None and state.get("flops_per_micro"):
            trainer.start_counted(state["flops_per_micro"])
        return trainer

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to ``train.max_steps`` (or until a stop signal); returns the final metrics (rank 0's)."""
        recipe = self.recipe
        self.stop = self.stop or StopFlag()
        if self.stop_requested():  # during start-up: nothing was trained, so nothing new to save
            return self.interrupted("corefm: stopped by signal before the first step; "
                                    + (f"the latest checkpoint is step {self.step}" if self.step else "nothing to save"))
        self.stall = stall = StallReport(self.cfg.stall_report_s, self.comm.rank)
        try:
            while self.step < self.cfg.max_steps:
                stall.enter(f"training step {self.step + 1}")
                self.train_step()
                self.step += 1
                self.monitor.advance(1)
                if self.step % recipe.log.every == 0 or self.step == self.cfg.max_steps:
                    self.log()
                if recipe.eval.every and self.step % recipe.eval.every == 0 and self.step < self.cfg.max_steps \
                        and recipe.data.val:
                    stall.enter(f"evaluation at step {self.step}")
                    with self.meter.paused():
                        self.monitor.log(self.step, self.evaluate(), kind="eval")
                if self.stop_requested():
                    stall.enter(f"the stop checkpoint at step {self.step}")
                    self.save()
                    return self.interrupted(f"corefm: stopped by signal at step {self.step}; checkpoint saved; "
                                            "run the same command again to resume")
                if recipe.checkpoint.every and self.step % recipe.checkpoint.every == 0 \
                        and self.step < self.cfg.max_steps:
                    stall.enter(f"the checkpoint at step {self.step}")
                    with self.meter.paused():
                        self.save()
            stall.enter("the final evaluation, checkpoint and export")
            return self.finish()
        finally:
            stall.close()

    def stop_requested(self) -> bool:
        """Collective (host values only): whether any rank got a stop signal."""
        return self.comm.host_sum([float(self.stop.requested)])[0] > 0

    def interrupted(self, message: str) -> dict[str, Any]:
        self.monitor.print(message)
        self.monitor.close()
        self.loader.close()
        return {"step": self.step, "interrupted": True}

    def train_step(self) -> None:
        """``grad_accum`` micro-batches forward and backward, then one optimizer step (skipped on every
        rank if any rank's loss was not finite) and one schedule step. A task whose loss couples the
        samples of a batch gets the whole step's micro-batches at once, through gradient caching."""
        k = self.cfg.grad_accum
        if k > 1 and self.task.couples_samples:
            batches = [self.placement.move(self.next_batch(), self.dtype) for _ in range(k)]
            cached_micro_steps(self.forward, self.task.coupled_loss, batches, self.engine.backward,
                               self.after_backward)
        else:
            for micro in range(k):
                out = self.forward(self.placement.move(self.next_batch(), self.dtype))
                self.engine.backward(out["loss"])
                self.after_backward(micro, out)
        self.scheduler.step()

    def next_batch(self) -> Any:
        """The next micro-batch, noting its sample count: with ``data.scales`` it changes step to step
        (the same on every rank), and samples/s must count what was trained."""
        batch = next(self.batches)
        self.micro_samples = batch_samples(batch, self.cfg.micro_batch_size)
        return batch

    def after_backward(self, micro: int, out: dict[str, torch.Tensor]) -> None:
        """Log a micro-batch's outputs, note its loss for the non-finite check, and step the engine
        (DeepSpeed's optimizer step happens at the accumulation boundary)."""
        self.window.add(out)
        self.guard.note(out["loss"])
        if micro == self.cfg.grad_accum - 1:
            self.guard.arm(self.step + 1)
        self.engine.step()
        if micro == self.cfg.grad_accum - 1:  # after the optimizer step
            clamp_bounded(self.task, self.bounds)
            if self.ema is not None:
                self.ema.update()
        self.meter.update(self.micro_samples * self.comm.world, 0, self.flops_per_micro * self.comm.world)

    def forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, torch.Tensor]:
        if self.flops_per_micro:
            return self.engine(batch, **kwargs)
        # FLOPs are counted once per run, on its first micro-batch (backward costs about twice the
        # forward), and a resumed run takes the count from its checkpoint: torch's counter decomposes
        # some ops into others, so the counted forward can round differently on a GPU, and it must
        # be the same step in an interrupted run as in an uninterrupted one.
        out, fwd_flops = count_flops(lambda: self.engine(batch, **kwargs))
        self.start_counted(3 * fwd_flops)
        return out

    def start_counted(self, flops_per_micro: int) -> None:
        """FLOPs per micro-batch are known: from here on forwards run as they are, compiled if the recipe
        says so (a compiled module runs kernels the counter cannot see)."""
        self.flops_per_micro = flops_per_micro
        if self.recipe.model_runtime.compile:
            self.engine.compile()

    # --- logging, evaluation, checkpoints ----------------------------------------------------
    def log(self) -> None:
        """Collective, a host sync: the window's means, speed, health, and the non-finite verdict."""
        reduced = self.window.reduce(self.comm)
        self.window.reset()
        tokens = reduced.pop("tokens")
        self.last_loss = reduced.pop("last_loss")
        metrics = dict(reduced)
        metrics.update(lr=self.scheduler.get_last_lr()[0], **self.meter.read(tokens), last_loss=self.last_loss)
        health = self.loader.stats()  # a warning names each bad shard and sample as it is hit
        keys = ("skipped_shards", "skipped_samples")
        metrics.update({k: v for k, v in zip(keys, self.comm.host_sum([health[k] for k in keys])) if v})  # all ranks
        self.metrics = metrics
        self.monitor.log(self.step, metrics)
        self.monitor.advance(0, {"loss": metrics["loss"]})
        self.meter.reset()
        self.check_nonfinite()

    def check_nonfinite(self) -> None:
        """Host sync: report the non-finite steps since the last check; stop where the recipe says so."""
        seen = self.guard.read()
        if not seen["steps"]:
            return
        cfg = self.cfg
        msg = (f"non-finite loss on {seen['first_ranks']} rank(s) at step {seen['first_step']}"
               + (f" and {seen['steps'] - 1} more step(s) since" if seen["steps"] > 1 else ""))
        if cfg.on_nonfinite == "stop" or seen["worst_run"] >= cfg.max_consecutive_nonfinite:
            raise TrainingError(msg + (f" ({seen['worst_run']} in a row)" if seen["worst_run"] > 1 else "")
                                + f"; train.on_nonfinite={cfg.on_nonfinite}")
        self.monitor.print(f"warning: {msg}; those optimizer steps were skipped")

    def evaluate(self) -> dict[str, float]:
        """Collective: the held-out metrics, and with an EMA the same metrics of the EMA weights as ``ema_*``."""
        self.comm.average_buffers_(self.task)
        # each evaluation batch counts as progress: a long evaluation is not a stall
        metrics = evaluate(self.engine, self.task, self.recipe, self.dtype, placement=self.placement,
                           comm=self.comm, on_batch=self.stall.beat)
        if self.ema is not None:
            with self.ema.applied():
                ema = evaluate(self.engine, self.task, self.recipe, self.dtype, placement=self.placement,
                               comm=self.comm, on_batch=self.stall.beat)
            metrics.update({f"ema_{k}": v for k, v in ema.items()})
        return metrics

    def save(self) -> None:
        """Collective: a checkpoint of this step (once per step)."""
        if self.saved_step == self.step:
            return
        self.check_nonfinite()  # a run told to stop on a non-finite loss stops before it saves
        self.comm.average_buffers_(self.task)  # rank 0's module file holds the buffers
        self.saved_step = self.step
        # The last logged training metrics: a run killed after its final checkpoint (during the final
        # evaluation or export) and started again trains no step, and reports these.
        train_metrics = {"loss": self.metrics.get("loss"), "last_loss": self.last_loss} if self.metrics \
            else self.resumed_metrics
        meta = {"step": self.step, "world_size": self.comm.world, "recipe": self.config_dict, "time": time.time(),
                "train_metrics": train_metrics}
        rank_state = {"data": self.loader.state_dict(), "flops_per_micro": self.flops_per_micro}
        tensors = {EMA_FILE: self.ema.full_state_dict()} if self.ema is not None else None  # collective
        ckpt.save(self.engine, self.ckpt_root, self.step, rank_state, meta, self.recipe.checkpoint.keep_last,
                  self.placement.device, tensors)

    def finish(self) -> dict[str, Any]:
        """Collective: the last checkpoint, final evaluation, export and ``final.json``."""
        self.save()
        final = {"step": self.step, "loss": self.metrics.get("loss"), "last_loss": self.last_loss}
        final_file = self.run_dir / "final.json"
        if self.last_loss is None:
            # A finished run started again trains no step and only re-evaluates: keep the training
            # losses its last checkpoint recorded instead of overwriting them with nothing.
            final.update(loss=self.resumed_metrics.get("loss"), last_loss=self.resumed_metrics.get("last_loss"))
        if self.recipe.data.val:
            final["eval"] = self.evaluate()
            self.monitor.log(self.step, final["eval"], kind="eval")
        if self.recipe.checkpoint.export_final and self.comm.rank == 0:
            from corefm.train.export import export_checkpoint, export_ema

            last = ckpt.latest_checkpoint(self.ckpt_root)
            final["export"] = str(export_checkpoint(last, self.task, self.run_dir / "model.safetensors"))
            if self.ema is not None:
                final["export_ema"] = str(export_ema(last, self.task, self.run_dir / "model_ema.safetensors"))
        self.comm.barrier()
        if self.comm.rank == 0:
            ckpt.write_text_atomic(final_file, json.dumps(final, indent=2))
        self.monitor.close()
        return final


def world_change_line(old_meta: dict[str, Any], recipe: Recipe, world: int, last: Path, remapped: str) -> str:
    """The one line that announces a resume at another world size."""
    old_train = old_meta["recipe"]["train"]
    before = old_train["micro_batch_size"] * old_train["grad_accum"] * old_meta["world_size"]
    after = recipe.train.micro_batch_size * recipe.train.grad_accum * world
    batch = f"global batch {before}" + (f" -> {after}" if after != before else " kept")
    return (f"corefm: world size {old_meta['world_size']} -> {world}: {last.name} loaded through DeepSpeed's "
            f"universal checkpoint ({ckpt.UNIVERSAL_TAG}/); {remapped}; {batch}")


def batch_samples(batch: Any, default: int) -> int:
    """Rows of a batch: the first dimension of its first tensor (``default`` if it holds none)."""
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim:
            return int(value.shape[0])
    return default


def _recorded_losses(run_dir: Path) -> dict[str, Any]:
    """Checkpoints from before corefm stored the training metrics in them: final.json's, if any."""
    final = run_dir / "final.json"
    return {k: v for k, v in json.loads(final.read_text()).items() if k in ("loss", "last_loss")} \
        if final.is_file() else {}


def train(recipe: Recipe, stop: StopFlag | None = None) -> dict[str, Any]:
    """Run (or resume) the recipe to ``train.max_steps``; returns the final metrics (rank 0's)."""
    trainer = Trainer.build(recipe, stop)
    try:
        return trainer.run()
    finally:
        # Data workers ignore SIGTERM (their rank decides when to stop), so the interpreter's exit
        # could not end any left running: they are stopped here, on success and on error alike.
        trainer.loader.close()
