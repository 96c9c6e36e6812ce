"""One stage of the elastic-resume test, run by torchrun on every rank:
``python -m torch.distributed.run --nproc-per-node N tests/e2e/elastic_probe.py RECIPE STEPS OUT --set ...``.

Builds corefm's Trainer (which resumes from the run's newest checkpoint, at whatever world size wrote
it), saves what it loaded into ``OUT/loaded`` before any step (DeepSpeed's layout at this world size,
for the test to consolidate and compare with the checkpoint it came from), trains STEPS steps with
the trainer's own step method, saves a regular checkpoint and writes ``OUT/probe.json``: the
learning rate right after resuming and right before the final save, and the loader's state.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from corefm.train import checkpoint as ckpt
from corefm.train.config import load_recipe
from corefm.train.trainer import Trainer


def main() -> None:
    recipe_path, steps, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    overrides = [a for flag, a in zip(sys.argv[4::2], sys.argv[5::2]) if flag == "--set"]
    trainer = Trainer.build(load_recipe(recipe_path, overrides))
    resumed_lr = trainer.scheduler.get_last_lr()[0]
    resumed_step = trainer.step
    if trainer.step:
        ckpt.save(trainer.engine, out / "loaded", trainer.step, {"data": trainer.loader.state_dict()},
                  {"step": trainer.step, "world_size": trainer.comm.world}, keep_last=0)
    for _ in range(steps):
        trainer.train_step()
        trainer.step += 1
    trainer.log()
    final_lr = trainer.scheduler.get_last_lr()[0]
    trainer.save()
    trainer.loader.close()
    trainer.monitor.close()
    if trainer.comm.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.json").write_text(json.dumps({
            "resumed_step": resumed_step, "resumed_lr": resumed_lr, "step": trainer.step, "final_lr": final_lr,
            "loss": trainer.metrics["loss"]}))
    # leave together: a rank whose gloo threads are still up at interpreter exit can abort there
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
