"""The layering rules: corefm is a library that never imports its projects, projects never reach into
each other, and no two top-level folders import each other in a cycle.

The import graph is read from the source (every ``import`` statement, function-level ones too), so a
cycle hidden inside a function still counts.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("corefm", "projects", "benchmarks", "tests")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement in ``path``."""
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this file's package
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            out.append((base, [alias.name for alias in node.names]))
    return out


def _sources() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p
            for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}


def _unit(module: str) -> str | None:
    """The layer a module belongs to: ``projects.<name>`` for a project, else its top-level folder."""
    parts = module.split(".")
    if parts[0] not in FOLDERS:
        return None
    return ".".join(parts[:2]) if parts[0] == "projects" and len(parts) > 1 else parts[0]


def _graph() -> dict[str, dict[str, list[str]]]:
    """{layer: {imported layer: [the importing modules]}} between distinct layers."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, path in _sources().items():
        src = _unit(module)
        for target, _ in _imports(path):
            dst = _unit(target)
            if dst is not None and dst != src and not (src.startswith("projects.") and dst == "projects"):
                graph[src][dst].append(module)
    return graph


def _cycle(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, {}):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in list(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_corefm_imports_no_project_benchmark_or_test():
    graph = _graph()
    assert not graph["corefm"], {k: v[:3] for k, v in graph["corefm"].items()}


def test_no_import_cycle_between_top_level_folders_or_projects():
    graph = _graph()
    folders = defaultdict(dict)
    for src, targets in graph.items():
        for dst, where in targets.items():
            a, b = src.split(".")[0], dst.split(".")[0]
            if a != b:
                folders[a][b] = where
    assert not _cycle(folders), _cycle(folders)
    assert not _cycle(graph), _cycle(graph)  # projects.X -> projects.Y -> projects.X is a cycle too


def test_no_project_uses_another_projects_private_names():
    bad = []
    for module, path in _sources().items():
        if _unit(module) is None or not module.startswith(("projects.", "benchmarks.")):
            continue
        for target, names in _imports(path):
            foreign = _unit(target) not in (_unit(module), None)
            private = [n for n in names if n.startswith("_") and n != "__version__"] + \
                [p for p in target.split(".")[1:] if p.startswith("_") and not p.startswith("__")]
            if foreign and private:
                bad.append(f"{module}: from {target} import {', '.join(names)}")
    assert not bad, bad


def _python(code: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_importing_the_library_imports_no_project():
    # the acceptance line, as a user would run it
    r = _python("import corefm.train.trainer, corefm.data, corefm.nn, corefm.hub.release, corefm.cli, sys; "
                "bad = [m for m in sys.modules if m.split('.')[0] in ('projects', 'data_tools', 'launch')]; "
                "assert not bad, bad")
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from corefm.data.image_sets import build

    out = tmp_path_factory.mktemp("digits")
    build("digits", out, train_shards=2, val_shards=1)
    return out


def test_training_the_digits_vit_imports_no_hf_open_clip_or_sam(digits, tmp_path):
    """One rank of a real run (the worker's own entry point, in this process): the recipe names
    vit_classifier and classification, so only projects.vit is imported."""
    from corefm.train.launcher import free_port

    port = free_port()
    overrides = [f"run_dir={tmp_path / 'run'}", f"data.train={digits / 'train'}", f"data.val={digits / 'val'}",
                 "train.max_steps=3", "model.width=32", "model.layers=1", "log.progress=false", "log.wandb=false",
                 "eval.every=0", "eval.max_batches=1", "checkpoint.export_final=false", "data.num_workers=1"]
    args = ["projects/vit/configs/digits_tiny.yaml", *sum((["--set", o] for o in overrides), [])]
    code = ("import json, sys; from corefm.train.worker import main; rc = main(%r); "
            "print('MODULES ' + json.dumps(sorted({m.split('.')[0] for m in sys.modules} | "
            "{m for m in sys.modules if m.startswith('projects.')}))); sys.exit(rc)" % args)
    r = _python(code, env={"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"step": 3' in r.stdout  # it trained
    modules = set(json.loads(r.stdout.split("MODULES ", 1)[1].splitlines()[0]))
    assert {"torch", "deepspeed", "projects.vit.model"} <= modules
    assert not modules & {"transformers", "open_clip", "segment_anything", "projects.openelm", "projects.clip_pseudo",
                          "projects.sam_clip", "projects.byteformer"}, sorted(modules)
