"""Build a recipe's task (with its model) from the registries; no DeepSpeed needed."""

from __future__ import annotations

import torch

from corefm.registry import MODELS, TASKS, lookup
from corefm.train.config import Recipe


def build_task(recipe: Recipe) -> torch.nn.Module:
    """Model and task from the recipe's registered names (same seed on every rank: same init)."""
    torch.manual_seed(recipe.train.seed)
    model = lookup(MODELS, "model", recipe.model_name).builder(recipe.model)
    return lookup(TASKS, "task", recipe.task_name).builder(recipe.task, model, recipe)
