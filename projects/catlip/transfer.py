"""Transfer of a CatLIP run to a labelled dataset: synset rows as the class head, and linear probes.

CatLIP's transfer trick: a downstream class whose name maps to a vocabulary synset starts from
that synset's classifier row (weight and bias), so the head is right before any fine-tuning.
A class name is read like a caption (:func:`caption_synsets`) and its *last* synset in the
vocabulary is taken: English noun phrases end on their head noun ("ankle boot" -> boot,
"pair of trousers" -> trousers). A class with none keeps a zero row.

:func:`transfer_report` measures, on frozen image features (the pooled, projected embedding the
classifier reads): the mapped head with no training (``transfer_init_top1``), a linear probe
from a zero head (``probe_top1``) and the same probe started from the mapped head
(``probe_transfer_top1``), equal epochs. A CLIP run's image features can be probed the same way
(no synset head: its zero-shot accuracy, ``corefm clip eval``, is the counterpart of the first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from corefm.data import DataConfig, build_eval_loader
from corefm.errors import ConfigError
from projects.catlip.labels import caption_synsets
from projects.catlip.shards import Vocabulary
from projects.catlip.wordnet import WordNet


def class_rows(class_names: Sequence[str], vocab: Vocabulary, wn: WordNet | None = None) -> list[int | None]:
    """Per class name: the vocabulary index of its head synset (its last one in the vocabulary), or None."""
    index = vocab.index()
    rows: list[int | None] = []
    for name in class_names:
        found = [index[s] for s in caption_synsets(name.replace("_", " "), wn) if s in index]
        rows.append(found[-1] if found else None)
    return rows


def transfer_head(classifier: nn.Linear, rows: Sequence[int | None]) -> nn.Linear:
    """A (num_classes x embed_dim) head whose class c is ``classifier``'s row ``rows[c]`` (weight and
    bias), or zeros where ``rows[c]`` is None."""
    head = nn.Linear(classifier.in_features, len(rows))
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for c, k in enumerate(rows):
            if k is not None:
                head.weight[c] = classifier.weight[k]
                head.bias[c] = classifier.bias[k]
    return head


def fit_linear(head: nn.Linear, feats: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float = 1e-3,
               batch: int = 256, seed: int = 0) -> nn.Linear:
    """Train ``head`` in place on frozen features (N, E) -> labels (N,) with AdamW and cross-entropy."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        for idx in torch.randperm(feats.shape[0], generator=gen).split(batch):
            loss = F.cross_entropy(head(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head


@torch.no_grad()
def accuracy(head: nn.Linear, feats: torch.Tensor, labels: torch.Tensor) -> float:
    return float((head(feats).argmax(-1) == labels).float().mean())


class _ImageAndClass:
    """Picklable raw sample -> {image, label} with a CatLIP task's eval preprocessing."""

    def __init__(self, cfg: Any, image_size: int, label_key: str = "cls") -> None:
        self.cfg, self.image_size, self.label_key = cfg, image_size, label_key

    def __call__(self, sample: dict) -> dict:
        from corefm.tasks.base import read_label
        from projects.clip_pseudo.labels import find_image, image_tensor

        label = read_label(sample.get(self.label_key, b"-1"), None, f"sample {sample.get('__key__')}")
        image = image_tensor(find_image(sample), self.image_size, tuple(self.cfg.mean), tuple(self.cfg.std), False)
        return {"image": image, "label": torch.tensor(label)}


@torch.no_grad()
def catlip_features(task: Any, data: str, max_samples: int = 0, workers: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Image features (N, embed_dim) and ``cls`` labels (N,) of a shard set under a CatLIP task."""
    model = task.model.eval()
    loader = build_eval_loader(data, DataConfig(num_workers=workers), rank=0, world_size=1, batch_size=128,
                               map_fn=_ImageAndClass(task.cfg, model.image_size))
    feats, labels = [], []
    bar = tqdm(total=max_samples or loader.num_samples, unit="img", desc="features", leave=False)
    for batch in loader:
        feats.append(model.features(batch["image"]))
        labels.append(batch["label"])
        bar.update(len(batch["label"]))
        if max_samples and sum(len(x) for x in labels) >= max_samples:
            break
    bar.close()
    if not feats:
        raise ConfigError(f"no usable samples in {data}")
    n = max_samples or None
    return torch.cat(feats)[:n], torch.cat(labels)[:n]


def run_features(run: Path, data: str, max_samples: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(features, labels, CatLIP task or None) of a CatLIP or CLIP run folder."""
    from corefm.train.evaluate import load_run

    recipe, task = load_run(run)
    if recipe.model_name == "catlip":
        feats, labels = catlip_features(task, data, max_samples)
        return feats, labels, task
    if recipe.model_name == "clip":
        from projects.clip_pseudo.evaluate import Loaded, extract

        out = extract(Loaded(task.model.eval(), recipe.task, []), data, [], max_samples, tokens=False)
        return out["image"], out["label"], None
    raise ConfigError(f"{run} is a {recipe.model_name} run; transfer reads catlip or clip runs")


def transfer_report(run: Path, train: str, val: str, class_names: Sequence[str], probe_samples: int = 2000,
                    epochs: int = 20, max_samples: int = 0) -> dict[str, float]:
    """The metrics described in the module docstring (a CLIP run: the probe only)."""
    tr_x, tr_y, task = run_features(run, train, probe_samples)
    te_x, te_y, _ = run_features(run, val, max_samples)
    keep_tr, keep_te = tr_y >= 0, te_y >= 0
    if not keep_tr.any() or not keep_te.any():
        raise ConfigError("transfer needs class labels (cls) in both --train and --data shards")
    tr_x, tr_y, te_x, te_y = tr_x[keep_tr], tr_y[keep_tr], te_x[keep_te], te_y[keep_te]
    if int(max(tr_y.max(), te_y.max())) >= len(class_names):
        raise ConfigError(f"labels go up to {int(max(tr_y.max(), te_y.max()))} but {len(class_names)} class names "
                          "were given")
    torch.manual_seed(0)
    out: dict[str, float] = {"probe_train_samples": float(len(tr_y)), "test_samples": float(len(te_y)),
                             "chance": float(torch.bincount(te_y).max()) / len(te_y)}
    zero = nn.Linear(tr_x.shape[1], len(class_names))
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)
    out["probe_top1"] = accuracy(fit_linear(zero, tr_x, tr_y, epochs), te_x, te_y)
    if task is not None:
        rows = class_rows(class_names, task.vocab)
        out["classes_mapped"] = float(sum(r is not None for r in rows))
        head = transfer_head(task.model.classifier, rows)
        out["transfer_init_top1"] = accuracy(head, te_x, te_y)
        out["probe_transfer_top1"] = accuracy(fit_linear(head, tr_x, tr_y, epochs), te_x, te_y)
    return out
