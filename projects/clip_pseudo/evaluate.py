"""``corefm clip eval``: zero-shot accuracy, retrieval R@1/5/10 and dense probes on frozen features.

The model is a corefm run folder (``recipe.json`` + ``model.safetensors``) or an open_clip folder
(``open_clip_config.json``, e.g. a release). Images go through the same preprocessing as training
(the run's task settings, or the folder's ``preprocess_cfg``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from corefm.data import DataConfig, build_eval_loader
from corefm.errors import CheckpointError, ConfigError
from projects.clip_pseudo.heads import HeadSpec
from projects.clip_pseudo.task import ClipTaskConfig, SampleTransform
from corefm.eval.zero_shot import classifier, topk_correct


@dataclass
class Loaded:
    model: torch.nn.Module
    task_cfg: ClipTaskConfig  # preprocessing (mean/std) and zero-shot defaults
    class_names: list[str]


def load_model(path: Path) -> Loaded:
    """A run folder or an open_clip folder -> model in eval mode with its preprocessing settings."""
    if (path / "recipe.json").is_file() and (path / "model.safetensors").is_file():
        from corefm.train.evaluate import load_run

        recipe, task = load_run(path)
        if recipe.model_name != "clip":
            raise ConfigError(f"{path} is a {recipe.model_name} run, not a clip run")
        return Loaded(task.model.eval(), recipe.task, list(task.class_names))
    if (path / "open_clip_config.json").is_file():
        from projects.clip_pseudo.openclip_io import load_heads, load_open_clip_checkpoint

        model = load_open_clip_checkpoint(path)
        load_heads(model, path)
        pre = json.loads((path / "open_clip_config.json").read_text()).get("preprocess_cfg", {})
        cfg = ClipTaskConfig()
        cfg.mean, cfg.std = list(pre.get("mean", cfg.mean)), list(pre.get("std", cfg.std))
        return Loaded(model.eval(), cfg, [])
    raise CheckpointError(f"{path} is neither a finished clip run (recipe.json + model.safetensors) "
                          "nor an open_clip folder (open_clip_config.json)")


@torch.no_grad()
def extract(loaded: Loaded, data: str, probes: list[HeadSpec], max_samples: int = 0, batch_size: int = 128,
            workers: int = 2, tokens: bool = True) -> dict[str, Any]:
    """Features of every sample: image/text embeddings, captions, cls, patch tokens, probe labels."""
    model, cfg = loaded.model, replace(loaded.task_cfg, heads=list(probes), hflip=False)
    sizes = {p.name: p.label_size or model.cfg.image_size for p in probes}
    fn = SampleTransform(cfg, model.cfg.image_size, model.cfg.context_length, sizes, train=False, keep_caption=True)
    loader = build_eval_loader(data, DataConfig(num_workers=workers), rank=0, world_size=1,
                               batch_size=batch_size, map_fn=fn)
    out: dict[str, list] = {}
    seen = 0
    bar = tqdm(total=max_samples or loader.num_samples, unit="img", desc="features", leave=False)
    for batch in loader:
        vision = model.visual(batch["image"])
        parts = {"image": torch.nn.functional.normalize(vision.pooled, dim=-1),
                 "text": model.encode_text(batch["text"], normalize=True), "label": batch["label"],
                 "caption": list(batch["caption"])}
        if tokens:
            parts["tokens"] = vision.patch_tokens
        parts.update({k: v for k, v in batch.items() if k.startswith(("label_", "mask_"))})
        for k, v in parts.items():
            out.setdefault(k, []).append(v)
        seen += len(batch["caption"])
        bar.update(len(batch["caption"]))
        if max_samples and seen >= max_samples:
            break
    bar.close()
    if not out:
        raise ConfigError(f"no usable samples in {data}")
    feats = {k: (sum(v, []) if k == "caption" else torch.cat(v)) for k, v in out.items()}
    if max_samples:
        feats = {k: v[:max_samples] for k, v in feats.items()}
    return feats


def zero_shot(loaded: Loaded, feats: dict, class_names: list[str], templates: Any) -> dict[str, float]:
    from open_clip import SimpleTokenizer

    known = feats["label"] >= 0
    if not known.any():
        return {}
    weights = classifier(loaded.model, SimpleTokenizer(context_length=loaded.model.cfg.context_length),
                         class_names, templates)
    hits = topk_correct(feats["image"][known], weights, feats["label"][known], ks=(1, 5))
    n = float(known.sum())
    return {"zero_shot_top1": float(hits[1]) / n, "zero_shot_top5": float(hits[5]) / n, "zero_shot_samples": n}


def probe_targets(spec: HeadSpec, feats: dict) -> tuple[torch.Tensor, torch.Tensor]:
    from projects.clip_pseudo.probe import semantic_target

    labels, mask = feats[f"label_{spec.name}"], feats[f"mask_{spec.name}"]
    if spec.name == "semantic":
        labels = semantic_target(labels, feats["label"].clamp(min=0), spec.ignore_index)
        mask = mask * (feats["label"] >= 0).float()
    return labels, mask


def run_probes(loaded: Loaded, probes: list[HeadSpec], train: dict, test: dict, epochs: int,
               fitted: dict[str, torch.nn.Module] | None = None) -> dict[str, float]:
    """Fit each probe on ``train``'s tokens, score it on ``test``'s; ``fitted`` (if given) gets the heads by name."""
    from projects.clip_pseudo.config import require_vit_tower
    from projects.clip_pseudo.probe import score_probe, train_probe

    require_vit_tower(loaded.model.cfg, "dense probes (--probe)")
    p = loaded.model.cfg.patch_size
    grid = (loaded.model.cfg.image_size // p,) * 2
    out: dict[str, float] = {}
    for spec in probes:
        size = spec.label_size or loaded.model.cfg.image_size
        labels, mask = probe_targets(spec, train)
        if mask.sum() == 0:
            raise ConfigError(f"probe {spec.name}: no training sample carries {spec.key}")
        head = train_probe(spec, train["tokens"], labels, mask, grid, size, epochs=epochs)
        if fitted is not None:
            fitted[spec.name] = head
        t_labels, t_mask = probe_targets(spec, test)
        out.update({f"probe_{k}": v for k, v in score_probe(spec, head, test["tokens"], t_labels, t_mask, grid,
                                                             size).items()})
    return out
