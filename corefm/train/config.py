"""Typed recipe configuration: dataclasses filled from YAML, with ``--set a.b=c`` overrides.

Every key is checked: an unknown key or a value of the wrong type stops the run with one line
that names the key and lists the valid ones. ``model`` and ``task`` are typed by the config
class their ``name`` registers (see :mod:`corefm.registry`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from corefm.data.config import DataConfig
from corefm.errors import ConfigError
from corefm.registry import MODELS, TASKS, lookup
from corefm.train.recipe_checks import check_values


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.05
    # Norm weights, biases and other 1-d parameters get no weight decay.
    no_decay_1d: bool = True


@dataclass
class ScheduleConfig:
    name: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0


@dataclass
class TrainConfig:
    max_steps: int = 100
    micro_batch_size: int = 32
    grad_accum: int = 1
    grad_clip: float = 1.0
    seed: int = 0
    # A non-finite loss on any rank skips that optimizer step on every rank ("skip"), or ends the
    # run at the next log step ("stop"); either way the step is named.
    on_nonfinite: Literal["skip", "stop"] = "skip"
    # Stop even in "skip" mode after this many consecutive non-finite steps.
    max_consecutive_nonfinite: int = 10
    # Deterministic kernels (torch.use_deterministic_algorithms, cuBLAS workspace, no cuDNN
    # autotuning): on a GPU a killed and resumed run then repeats the uninterrupted one exactly.
    deterministic: bool = False
    # A rank stuck this many seconds in one training step, evaluation batch or checkpoint save
    # prints its stacks and its data workers' (corefm/train/stall.py), so a hang says where it
    # waits before a peer's collective timeout ends the run; 0 turns the report off. Below
    # data.worker_timeout, so a stuck data worker shows its stack before it is restarted.
    stall_report_s: float = 240.0


@dataclass
class ModelRuntimeConfig:
    """Keys every ``model`` section takes beside its own: how the model runs, not what it is."""

    # Wrap the model (through DeepSpeed's engine) with torch.compile.
    compile: bool = False
    # Kernel choices (corefm.nn.kernels): auto picks per device.
    attention_backend: Literal["auto", "sdpa", "dense"] = "auto"
    linear_backend: Literal["auto", "plain", "packed"] = "auto"


RUNTIME_KEYS = tuple(f.name for f in dataclasses.fields(ModelRuntimeConfig))


def model_architecture(model_section: dict) -> dict:
    """A recipe dict's model section without ``name`` and the runtime keys: what the weights need."""
    return {k: v for k, v in model_section.items() if k != "name" and k not in RUNTIME_KEYS}


@dataclass
class DeepSpeedConfig:
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["fp32", "bf16"] = "fp32"
    # Extra ds_config keys merged over the preset (corefm/train/ds_configs/zero<N>.json).
    config: dict = field(default_factory=dict)
    config_file: str = ""


@dataclass
class CheckpointConfig:
    every: int = 0  # steps; 0 = only at the end and on SIGTERM/SIGINT
    keep_last: int = 2
    resume: Literal["auto", "never"] = "auto"
    export_final: bool = True  # write a consolidated fp32 model.safetensors at the end


@dataclass
class LogConfig:
    every: int = 10
    progress: bool = True
    jsonl: bool = True
    # "auto" (or true): online with WANDB_API_KEY set, else offline files; false (YAML "off") disables.
    wandb: bool | Literal["auto", "online", "offline"] = "auto"
    wandb_project: str = "corefm"
    run_name: str = ""


@dataclass
class EvalConfig:
    every: int = 0  # steps; 0 = only at the end
    max_batches: int = 0  # 0 = the whole validation set
    batch_size: int = 0  # 0 = train.micro_batch_size


@dataclass
class EmaConfig:
    """Weight EMA (corefm.train.ema): 0 = off; else the newest step's weight, CoreNet's momentum
    (1e-4 averages over ~10k steps). The EMA is evaluated beside the raw weights and exported as
    ``model_ema.safetensors``."""

    momentum: float = 0.0


@dataclass
class Recipe:
    model: Any
    task: Any
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    run_dir: str = "runs/default"
    # Set from model.name / task.name and the model section's runtime keys when the recipe is parsed.
    model_name: str = field(default="", init=False)
    task_name: str = field(default="", init=False)
    model_runtime: ModelRuntimeConfig = field(default_factory=ModelRuntimeConfig, init=False)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (e.g. list -> tuple)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        # Compared with the type too: True == 1 and 1.0 == 1 in Python, but `zero_stage: true` is no stage.
        if not any(type(value) is type(arg) and value == arg for arg in typing.get_args(tp)):
            raise ConfigError(f"{key}: {value!r} is not {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if errors else f"{key}: bad value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is float:
        # PyYAML (YAML 1.1) reads 3e-4 (no dot) as a string; accept it as the number it spells.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {type(value).__name__} {value!r}")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{key}: unsupported annotation {tp!r}")


def from_dict(cls: type, data: Any, prefix: str = "", also_valid: tuple[str, ...] = ()) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    ``also_valid``: keys the caller takes out of the mapping beforehand, listed in the error message.
    """
    where = prefix or "recipe"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            valid = [*fields, *also_valid]
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {full!r}{hint}; valid keys: {', '.join(valid)}")
        kwargs[key] = _convert(value, hints[key], full)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}")
    return cls(**kwargs)


def apply_preset(section: str, entry: Any, body: dict) -> dict:
    """``body`` over the fields of the preset it names (``preset: NAME``): every key the recipe writes
    wins, even one equal to the dataclass default. Without ``preset`` the body is returned as is."""
    if "preset" not in body:
        return body
    body = dict(body)
    name = body.pop("preset")
    if not entry.presets:
        raise ConfigError(f"{section}.preset: {section} {entry.name!r} has no presets")
    try:
        fields = entry.presets[name] if isinstance(name, str) else None
    except KeyError:
        fields = None
    if fields is None:
        known = list(entry.presets)
        listed = ", ".join(map(str, known[:12])) + (f", ... ({len(known)} in all)" if len(known) > 12 else "")
        raise ConfigError(f"{section}.preset: unknown {entry.name} preset {name!r} (known: {listed})")
    return {**fields, **body}


def _named(section: str, table: dict, raw: Any, also_valid: tuple[str, ...] = ()) -> Any:
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError(f"{section}: needs a 'name' key naming a registered {section}")
    body = dict(raw)
    entry = lookup(table, section, body.pop("name"))
    valid = (*also_valid, "preset") if entry.presets else also_valid
    cfg = from_dict(entry.config_cls, apply_preset(section, entry, body), section, valid)
    return entry.name, cfg


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` strings to a raw recipe dict; values are parsed as YAML (``1e-3``, ``[1,2]``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.max_steps=100")
        path, _, text = item.partition("=")
        keys = path.strip().split(".")
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {k!r} is not a section")
        try:
            node[keys[-1]] = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({e.problem})") from None
    return raw


def load_raw(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (a recipe is UTF-8 YAML)") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read ({e.strerror})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a recipe must be a mapping of sections")
    return raw


def parse_recipe(raw: dict) -> Recipe:
    """Validate a raw recipe dict into a :class:`Recipe` (model/task typed by their registries)."""
    raw = dict(raw)
    for section in ("model", "task"):
        if section not in raw:
            raise ConfigError(f"recipe: missing required section {section!r}")
    model_raw = raw.pop("model")
    runtime = {}
    if isinstance(model_raw, dict):
        runtime = {k: v for k, v in model_raw.items() if k in RUNTIME_KEYS}
        model_raw = {k: v for k, v in model_raw.items() if k not in RUNTIME_KEYS}
    model_name, model_cfg = _named("model", MODELS, model_raw, RUNTIME_KEYS)
    task_name, task_cfg = _named("task", TASKS, raw.pop("task"))
    recipe = from_dict(Recipe, {**raw, "model": None, "task": None})
    recipe.model, recipe.task = model_cfg, task_cfg
    recipe.model_name, recipe.task_name = model_name, task_name
    recipe.model_runtime = from_dict(ModelRuntimeConfig, runtime, "model")
    check_values(recipe)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    return parse_recipe(apply_overrides(load_raw(path), overrides or []))


def recipe_to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain data (saved beside checkpoints and in release folders)."""
    out = {}
    for f in dataclasses.fields(recipe):
        if not f.init:
            continue
        value = getattr(recipe, f.name)
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    out["model"] = {"name": recipe.model_name, **out["model"], **dataclasses.asdict(recipe.model_runtime)}
    out["task"] = {"name": recipe.task_name, **out["task"]}
    return _plain(out)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
