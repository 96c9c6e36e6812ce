"""Build a recipe's task (with its model) from the registries; no DeepSpeed needed."""

from __future__ import annotations

import torch

from corefm.data.errors import one_line
from corefm.errors import ConfigError, CorefmError
from corefm.registry import MODELS, TASKS, lookup
from corefm.tasks.base import Task, TaskContext
from corefm.train.config import Recipe


def compute_dtype(recipe: Recipe) -> torch.dtype:
    """The dtype batches are cast to and the engine computes in."""
    return torch.bfloat16 if recipe.deepspeed.precision == "bf16" else torch.float32


def task_context(recipe: Recipe) -> TaskContext:
    """The part of the recipe a task may see: its data and the trainer's decisions."""
    return TaskContext(train_data=recipe.data.train, val_data=recipe.data.val, dtype=compute_dtype(recipe),
                       zero_stage=recipe.deepspeed.zero_stage)


def build_task(recipe: Recipe) -> Task:
    """Model and task from the recipe's registered names (same seed on every rank: same init)."""
    torch.manual_seed(recipe.train.seed)
    try:
        model = lookup(MODELS, "model", recipe.model_name).builder(recipe.model)
    except CorefmError:
        raise
    except ValueError as e:  # a shape the architecture cannot take (width not divisible by heads...)
        raise ConfigError(f"model {recipe.model_name}: {one_line(e)}") from None
    return lookup(TASKS, "task", recipe.task_name).builder(recipe.task, model, task_context(recipe))


def register_external_parameters(task: Task, zero_stage: int) -> int:
    """Tell ZeRO-3 about the parameters ``task.external_parameters()`` names (read in the task's own
    forward, outside their modules' forwards), so it gathers them there. Returns how many."""
    params = list(task.external_parameters())
    if zero_stage == 3 and params:
        from deepspeed.runtime.zero.partition_parameters import register_external_parameter

        for p in params:
            register_external_parameter(task, p)
    return len(params)
