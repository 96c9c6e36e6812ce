"""Zero-shot classification with open_clip's classifier builder and prompt templates."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from corefm.errors import ConfigError


def templates(name: str | Sequence[str | Callable[[str], str]]) -> list[str | Callable[[str], str]]:
    """``simple`` / ``openai`` (open_clip's ImageNet template sets), or a list of templates: strings
    with ``{}`` or callables ``classname -> prompt`` (open_clip's own sets are lists of those)."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    if isinstance(name, str):
        table = {"simple": SIMPLE_IMAGENET_TEMPLATES, "openai": OPENAI_IMAGENET_TEMPLATES}
        if name not in table:
            raise ConfigError(f"unknown template set {name!r}: use simple, openai or a list of strings with {{}}")
        # open_clip's sets are callables (lambda c: f"a photo of a {c}."); they work as is
        return list(table[name])
    out = list(name)
    if not out or any(not callable(t) and (not isinstance(t, str) or "{}" not in t) for t in out):
        raise ConfigError("zero-shot templates must be a non-empty list of strings containing {} "
                          "(or of callables classname -> prompt)")
    if any(callable(t) for t in out):  # open_clip formats all strings or calls all callables
        out = [t if callable(t) else (lambda c, t=t: t.format(c)) for t in out]
    return out


def classifier(model: torch.nn.Module, tokenizer, classnames: Sequence[str], template_set) -> torch.Tensor:
    """(embed_dim, num_classes) normalised class embeddings, averaged over templates (open_clip)."""
    from open_clip import build_zero_shot_classifier

    device = next(model.parameters()).device
    return build_zero_shot_classifier(model, tokenizer, list(classnames), templates(template_set),
                                      num_classes_per_batch=10, device=device)


def topk_correct(image_features: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                 ks: Sequence[int] = (1, 5)) -> dict[int, torch.Tensor]:
    """image_features (B, E) normalised, weights (E, C), labels (B,) -> {k: number correct in top-k}."""
    logits = image_features.float() @ weights.float()
    top = logits.topk(min(max(ks), logits.shape[1]), dim=-1).indices
    hit = top == labels[:, None]
    return {k: hit[:, :k].any(dim=1).sum().float() for k in ks}
