"""Name -> (config dataclass, builder) registries, filled on demand from a declared list.

corefm imports no project. A distribution declares what its packages provide in its
``pyproject.toml`` (Python entry points), one name per line::

    [project.entry-points."corefm.models"]
    openelm = "projects.openelm.model"          # the module that registers model "openelm"

and the module registers on import::

    @register_model("openelm", OpenELMConfig, presets=SIZES)
    def build(cfg: OpenELMConfig) -> nn.Module: ...

``presets`` maps a name to config fields: a recipe's ``model: {name: openelm, preset: tiny, ...}``
starts from those fields, and every key the recipe writes wins over them (even one equal to the
dataclass default). Any ``Mapping`` works, so a project may resolve names lazily (CLIP reads
open_clip's model configs).

A recipe's ``model: {name: openelm, ...}`` then imports ``projects.openelm.model`` and nothing
else, so a digits-ViT run never imports transformers or open_clip. The groups:

| group | name | module registers |
|---|---|---|
| ``corefm.models`` | a recipe's ``model.name`` | :func:`register_model` |
| ``corefm.tasks`` | a recipe's ``task.name`` | :func:`register_task` |
| ``corefm.releases`` | a model name | ``corefm.hub.release.register_release`` (else the generic writer) |
| ``corefm.commands`` | ``corefm <name> ...`` | the value is ``module:function``, called with the sub-command table |
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable

from corefm.errors import ConfigError, CorefmError


@dataclass(frozen=True)
class Entry:
    name: str
    config_cls: type
    builder: Callable[..., Any]
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


MODELS: dict[str, Entry] = {}
TASKS: dict[str, Entry] = {}
GROUPS = {"model": "corefm.models", "task": "corefm.tasks", "release": "corefm.releases",
          "command": "corefm.commands"}


Presets = Mapping[str, Mapping[str, Any]]


def _register(table: dict[str, Entry], kind: str, name: str, config_cls: type, presets: Presets | None):
    def wrap(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in table and table[name].builder is not builder:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = Entry(name, config_cls, builder, presets if presets is not None else {})
        return builder

    return wrap


def register_model(name: str, config_cls: type, presets: Presets | None = None):
    """Decorator: ``builder(cfg) -> nn.Module`` becomes recipe ``model.name: <name>``; ``presets``
    names field sets a recipe picks with ``preset:``."""
    return _register(MODELS, "model", name, config_cls, presets)


def register_task(name: str, config_cls: type, presets: Presets | None = None):
    """Decorator: ``builder(cfg, model, context: TaskContext) -> Task`` becomes recipe ``task.name: <name>``."""
    return _register(TASKS, "task", name, config_cls, presets)


def declared(kind: str) -> dict[str, EntryPoint]:
    """The names the installed distributions declare for ``kind`` (model, task, release, command)."""
    return {ep.name: ep for ep in entry_points(group=GROUPS[kind])}


def import_declared(kind: str, name: str) -> EntryPoint | None:
    """Import the module declared for ``name`` (None when nothing declares it); one line on failure."""
    ep = declared(kind).get(name)
    if ep is None:
        return None
    try:
        importlib.import_module(ep.module)
    except ImportError as e:
        raise CorefmError(f"{kind} {name!r} is declared in {ep.module}, which does not import: "
                          f"{type(e).__name__}: {e}") from None
    return ep


def lookup(table: dict[str, Entry], kind: str, name: str) -> Entry:
    """The registered entry for ``name``, importing only the module that declares it."""
    if name not in table:
        ep = import_declared(kind, name)
        if ep is None:
            known = sorted(set(table) | set(declared(kind)))
            hint = "" if known else " (is corefm installed? `pip install -e .` declares its projects)"
            raise ConfigError(f"{kind}.name: unknown {kind} {name!r} (known: {', '.join(known) or 'none'}){hint}")
        if name not in table:
            raise CorefmError(f"{ep.module} is declared for {kind} {name!r} but did not register it")
    return table[name]
