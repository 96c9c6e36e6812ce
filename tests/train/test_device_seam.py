"""The trainer's device seam, checked on CPU-only machines with a stand-in CUDA device.

The trainer's own step, evaluation and metric code runs on fake CUDA tensors (torch's
FakeTensorMode) behind a stand-in engine: every batch the task receives must be on the device the
trainer chose, every collective must get a tensor on the communication device, and nothing in a
step may read a value back to the host (a fake tensor has none: reading one fails).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from corefm.data import build_loader
from corefm.train.build import build_task
from corefm.train.comm import Comm
from corefm.train.config import load_recipe
from corefm.train.evaluate import eval_sums
from corefm.train.meters import Throughput
from corefm.train.monitor import Monitor
from corefm.train.optim import build_optimizer
from corefm.train.placement import Placement, rank_placement
from corefm.train.schedule import build_scheduler
from corefm.train.trainer import Trainer
from tests.e2e.util import ROOT
from tests.stand_in_device import CUDA, stand_in_cuda, to_stand_in


@dataclass
class StandInAccelerator:
    """DeepSpeed's accelerator interface, as a GPU node's would answer."""

    current: list[int] = field(default_factory=list)

    def device_name(self, index: int | None = None) -> str:
        return "cuda" if index is None else f"cuda:{index}"

    def set_device(self, index: int) -> None:
        self.current.append(index)

    def communication_backend_name(self) -> str:
        return "nccl"


class StandInEngine:
    """What the trainer calls on DeepSpeed's engine; records where each batch tensor lives."""

    def __init__(self, task: torch.nn.Module) -> None:
        self.task, self.devices, self.backwards, self.steps = task, set(), 0, 0

    def __call__(self, batch: dict, mode: str = "train") -> dict:
        self.devices |= {v.device for v in batch.values() if torch.is_tensor(v)}
        return self.task(batch, mode=mode)

    def backward(self, loss: torch.Tensor) -> None:
        assert loss.device == CUDA
        self.backwards += 1

    def step(self) -> None:
        self.steps += 1

    def eval(self) -> None:
        self.task.eval()

    def train(self) -> None:
        self.task.train()


def test_rank_placement_drives_the_gpu_local_rank_names():
    acc = StandInAccelerator()
    placement = rank_placement(acc, env={"LOCAL_RANK": "3"})
    assert placement.device == torch.device("cuda", 3) and acc.current == [3]
    assert placement.comm_device == placement.device and placement.pin_memory
    cpu = rank_placement(env={"LOCAL_RANK": "3"})  # DeepSpeed's own accelerator on this machine
    assert cpu.device == torch.device("cpu") and cpu.comm_device == torch.device("cpu") and not cpu.pin_memory


def test_batches_move_whole_and_in_the_engine_dtype():
    batch = {"image": torch.randn(2, 3), "label": torch.tensor([1, 2]), "nested": [torch.ones(1)], "name": "x"}
    with stand_in_cuda():
        moved = Placement(CUDA, "nccl").move(batch, torch.bfloat16)
        assert moved["image"].device == CUDA and moved["image"].dtype == torch.bfloat16
        assert moved["label"].device == CUDA and moved["label"].dtype == torch.int64
        assert moved["nested"][0].device == CUDA and moved["name"] == "x"


def test_collectives_refuse_tensors_off_the_communication_device():
    comm = Comm(CUDA)
    with pytest.raises(RuntimeError, match="communicates on cuda:0"):
        comm.sum_(torch.zeros(3))
    with stand_in_cuda():
        comm.sum_(torch.zeros(3, device=CUDA))
    assert Comm(torch.device("cpu")).host_sum([1.0, 2.0]) == [1.0, 2.0]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from corefm.data.image_sets import build

    out = tmp_path_factory.mktemp("digits")
    build("digits", out, train_shards=2, val_shards=1)
    return out


def _trainer(tmp_path: Path, task: torch.nn.Module, recipe, batches: list) -> tuple[Trainer, StandInEngine]:
    """Inside stand_in_cuda: the trainer around ``task`` on the stand-in device, fed ``batches``."""
    placement, comm = Placement(CUDA, "nccl"), Comm(CUDA)
    to_stand_in(task)
    engine = StandInEngine(task)
    optimizer = build_optimizer(task, recipe.optim)
    monitor = Monitor(recipe.log, tmp_path, recipe.train.max_steps, 0, {}, enabled=False)
    trainer = Trainer(recipe, placement, comm, task, engine, optimizer,
                      build_scheduler(optimizer, recipe.schedule, recipe.train.max_steps), iter(batches), monitor,
                      Throughput(1.0))
    return trainer, engine


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")  # no real optimizer step here
def test_training_steps_run_on_the_chosen_device_without_host_syncs(digits, tmp_path, monkeypatch):
    recipe = load_recipe(ROOT / "projects/vit/configs/digits_tiny.yaml", [
        f"data.train={digits / 'train'}", f"data.val={digits / 'val'}", "data.num_workers=0",
        "train.grad_accum=2", "train.micro_batch_size=8", "eval.max_batches=2", f"run_dir={tmp_path}"])
    task = build_task(recipe)  # real weights, made before the fake mode starts
    # The data pipeline runs on the host (in worker processes, which a fake mode cannot reach), so
    # its CPU batches are made beforehand; what the trainer does with them is what is checked.
    loader = build_loader(recipe.data.train, recipe.data, rank=0, world_size=1, batch_size=8,
                          map_fn=task.sample_transform(True), collate_fn=task.collate)
    train_batches = [next(loader) for _ in range(6)]
    val_batches = train_batches[:2]
    monkeypatch.setattr("corefm.train.evaluate.build_eval_loader", lambda *a, **kw: val_batches)
    with stand_in_cuda() as rec:
        trainer, engine = _trainer(tmp_path, task, recipe, train_batches)
        rec.clear()
        for _ in range(3):
            trainer.train_step()
        assert engine.devices == {CUDA}  # the seam moved every batch
        assert (engine.backwards, engine.steps) == (6, 6)
        assert trainer.optimizer.found_inf.device == CUDA  # the skip flag the optimizer reads
        assert trainer.window.count.device == CUDA and trainer.guard.counts.device == CUDA
        assert not rec.cpu_outputs, rec.cpu_outputs[:5]
        assert not rec.host_syncs, rec.host_syncs[:5]  # the host reads values only at log steps
        engine.devices.clear()
        sums = eval_sums(engine, trainer.task, trainer.recipe, torch.float32, "", trainer.placement, trainer.comm)
        assert engine.devices == {CUDA} and {v.device for v in sums.values()} == {CUDA} and "correct" in sums
        assert not rec.cpu_outputs and not rec.host_syncs
    assert trainer.scheduler.last_epoch == 3  # stepped once per training step, by the trainer
