"""Name -> (config dataclass, builder) registries, so recipes can name models and tasks.

Projects register on import::

    @register_model("vit_classifier", ViTClassifierConfig)
    def build(cfg: ViTClassifierConfig) -> nn.Module: ...

and the recipe says ``model: {name: vit_classifier, width: 64, ...}``; the keys after ``name``
are checked against the dataclass (unknown keys are errors).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

from corefm.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    name: str
    config_cls: type
    builder: Callable[..., Any]


MODELS: dict[str, Entry] = {}
TASKS: dict[str, Entry] = {}


def _register(table: dict[str, Entry], kind: str, name: str, config_cls: type):
    def wrap(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in table and table[name].builder is not builder:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = Entry(name, config_cls, builder)
        return builder

    return wrap


def register_model(name: str, config_cls: type):
    """Decorator: ``builder(cfg) -> nn.Module`` becomes recipe ``model.name: <name>``."""
    return _register(MODELS, "model", name, config_cls)


def register_task(name: str, config_cls: type):
    """Decorator: ``builder(cfg, model, recipe) -> Task`` becomes recipe ``task.name: <name>``."""
    return _register(TASKS, "task", name, config_cls)


def lookup(table: dict[str, Entry], kind: str, name: str) -> Entry:
    load_projects()
    if name not in table:
        raise ConfigError(f"{kind}.name: unknown {kind} {name!r} (known: {', '.join(sorted(table)) or 'none'})")
    return table[name]


_loaded = False


def load_projects() -> None:
    """Import corefm's generic tasks and every package under ``projects/`` so they register."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("corefm.tasks")
    import projects

    for mod in pkgutil.iter_modules(projects.__path__):
        if mod.ispkg:
            importlib.import_module(f"projects.{mod.name}")
