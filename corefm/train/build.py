"""Build a recipe's task (with its model) from the registries; no DeepSpeed needed."""

from __future__ import annotations

import torch

from corefm.data.errors import one_line
from corefm.errors import ConfigError, CorefmError
from corefm.registry import MODELS, TASKS, lookup
from corefm.train.config import Recipe


def build_task(recipe: Recipe) -> torch.nn.Module:
    """Model and task from the recipe's registered names (same seed on every rank: same init)."""
    torch.manual_seed(recipe.train.seed)
    try:
        model = lookup(MODELS, "model", recipe.model_name).builder(recipe.model)
    except CorefmError:
        raise
    except ValueError as e:  # a shape the architecture cannot take (width not divisible by heads...)
        raise ConfigError(f"model {recipe.model_name}: {one_line(e)}") from None
    return lookup(TASKS, "task", recipe.task_name).builder(recipe.task, model, recipe)
