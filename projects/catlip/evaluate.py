"""``corefm catlip eval``: synset prediction on held-out CatLIP shards, for a CatLIP or a CLIP run.

Both runs answer the same question, which vocabulary synsets a held-out image shows, and are
scored alike (:func:`synset_metrics`): a CatLIP run with its classifier's logits, a CLIP run by
zero-shot, its text tower embedding each synset's lemma in prompt templates (open_clip's
classifier builder). This puts CatLIP's classification loss and CLIP's contrastive loss on one
held-out metric for the same image tower and data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from corefm.data import DataConfig, build_eval_loader
from corefm.errors import ConfigError
from projects.catlip.shards import Vocabulary, read_vocabulary
from projects.catlip.task import CatlipTaskConfig, SampleTransform


def synset_metrics(logits: torch.Tensor, target: torch.Tensor, prior_class: int) -> dict[str, float]:
    """logits, target (N, V) -> top-1 precision, recall@5, mean average precision over images,
    and the top-1 precision of always answering ``prior_class`` (the chance level)."""
    top1 = target.gather(1, logits.argmax(-1, keepdim=True)).mean()
    top5 = target.gather(1, logits.topk(min(5, logits.shape[1]), -1).indices).sum(-1) / target.sum(-1).clamp(min=1)
    # average precision per image: mean over its positives of the precision at each positive's rank
    order = logits.argsort(-1, descending=True)
    hits = target.gather(1, order)
    precision_at = hits.cumsum(-1) / torch.arange(1, hits.shape[1] + 1)
    ap = (precision_at * hits).sum(-1) / hits.sum(-1).clamp(min=1)
    return {"top1_precision": float(top1), "recall5": float(top5.mean()), "map": float(ap.mean()),
            "prior_top1": float(target[:, prior_class].mean()), "samples": float(target.shape[0])}


def _batches(data: str, cfg: CatlipTaskConfig, image_size: int, num_classes: int):
    loader = build_eval_loader(data, DataConfig(num_workers=2), rank=0, world_size=1, batch_size=128,
                               map_fn=SampleTransform(cfg, image_size, num_classes, train=False))
    return tqdm(loader, total=-(-loader.num_samples // 128) if loader.num_samples else None, unit="batch",
                desc="eval", leave=False)


@torch.no_grad()
def evaluate(run: Path, data: str, templates: Any = "a drawing of a {}.,a photo of a {}.") -> dict[str, float]:
    """:func:`synset_metrics` of a catlip or clip run folder on a CatLIP shard set ``data``."""
    from corefm.train.evaluate import load_run

    vocab: Vocabulary = read_vocabulary(data.split("#")[0])
    recipe, task = load_run(run)
    model = task.model.eval()
    if recipe.model_name == "catlip":
        if task.vocab.synsets != vocab.synsets:
            raise ConfigError(f"{data} is labelled with another vocabulary than {run} was trained on "
                              "(label it with `corefm catlip labels --vocabulary RUN_TRAIN_SHARDS`)")
        score, cfg, size = model, task.cfg, model.image_size
    elif recipe.model_name == "clip":
        from open_clip import SimpleTokenizer

        from corefm.eval.zero_shot import classifier

        prompts = templates.split(",") if isinstance(templates, str) else templates
        names = [lemma.replace("_", " ") for lemma in vocab.lemmas]
        weights = classifier(model, SimpleTokenizer(context_length=model.cfg.context_length), names, prompts)
        cfg = CatlipTaskConfig(mean=list(recipe.task.mean), std=list(recipe.task.std))
        size = model.cfg.image_size

        def score(images: torch.Tensor) -> torch.Tensor:
            return F.normalize(model.encode_image(images), dim=-1) @ weights
    else:
        raise ConfigError(f"{run} is a {recipe.model_name} run; catlip eval reads catlip or clip runs")
    logits, targets = [], []
    for batch in _batches(data, cfg, size, len(vocab)):
        logits.append(score(batch["image"]).float())
        targets.append(batch["target"])
    if not logits:
        raise ConfigError(f"no usable samples in {data}")
    prior = max(range(len(vocab)), key=lambda k: vocab.counts[k])
    return synset_metrics(torch.cat(logits), torch.cat(targets), prior)
