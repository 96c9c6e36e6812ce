"""The declared-name lookup every train, release and command goes through."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from corefm import cli, registry
from corefm.errors import ConfigError, CorefmError


def _declare(monkeypatch, kind: str, name: str, value: str) -> None:
    real = registry.declared

    def declared(k: str) -> dict[str, EntryPoint]:
        found = real(k)
        if k == kind:
            found[name] = EntryPoint(name=name, value=value, group=registry.GROUPS[kind])
        return found

    monkeypatch.setattr(registry, "declared", declared)


def test_an_unknown_name_lists_the_declared_ones():
    with pytest.raises(ConfigError, match=r"^task.name: unknown task 'clipp' \(known: .*clip.*\)$"):
        registry.lookup(registry.TASKS, "task", "clipp")


def test_a_declared_module_that_fails_to_import_is_one_line(monkeypatch):
    _declare(monkeypatch, "model", "broken", "projects.no_such_project.model")
    with pytest.raises(CorefmError, match=r"^model 'broken' is declared in projects.no_such_project.model, which "
                                          r"does not import: ModuleNotFoundError"):
        registry.lookup(registry.MODELS, "model", "broken")


def test_a_declared_module_that_registers_nothing_is_an_error(monkeypatch):
    _declare(monkeypatch, "model", "silent", "corefm.nn")
    with pytest.raises(CorefmError, match="corefm.nn is declared for model 'silent' but did not register it"):
        registry.lookup(registry.MODELS, "model", "silent")


def test_a_project_command_that_fails_to_import_is_one_line(monkeypatch, capsys):
    _declare(monkeypatch, "command", "broken", "projects.no_such_project.cli:add_cli")
    assert cli.main(["broken", "run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("corefm: error: command 'broken' is declared in "), err
