"""The unigram baseline a trained LM must beat: perplexity of val shards under train-shard token counts.

p(t) = (count_train(t) + 1) / (N_train + V)  (add-one smoothing, so unseen tokens are finite), and

    ppl = exp(-mean over val targets of log p(target))

over exactly the targets the LM task scores: ``tokens[1:]`` of each sample (cropped to
``seq_len + 1`` when the recipe crops), padding (negative ids) excluded. A model that only
learned token frequencies would reach this number; anything using context does better.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from corefm.data import DataError, load_manifest
from corefm.data.shards import iter_shard
from corefm.data.urls import expand_urls


def iter_token_samples(spec: str) -> Iterator[np.ndarray]:
    """Every sample's ``tokens.npy`` (seq_len + 1,) of a shard spec (folder, pattern, ...), in order."""
    for url in expand_urls(spec):
        for sample in iter_shard(url):
            data = sample.get("tokens.npy")
            if data is None:
                raise DataError(f"{url}: sample {sample['__key__']} has no tokens.npy (not an LM shard set)")
            yield np.load(io.BytesIO(data), allow_pickle=False)


def manifest_vocab_size(spec: str) -> int | None:
    """The tokenizer vocabulary size a ``projects.openelm.data.token_shards`` manifest records, if ``spec`` is such a folder."""
    path = Path(spec.partition("#")[0])
    if not (path / "dataset.json").is_file():
        return None
    return load_manifest(path).producer.get("tokenizer", {}).get("vocab_size")


def token_counts(spec: str, vocab_size: int, seq_len: int = 0) -> np.ndarray:
    """(vocab_size,) int64 counts of the non-padding ids at every position of every sample."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for tokens in iter_token_samples(spec):
        tokens = tokens[: seq_len + 1] if seq_len else tokens
        real = tokens[tokens >= 0]
        if real.size and real.max() >= vocab_size:
            raise DataError(f"{spec}: token id {int(real.max())} >= vocabulary size {vocab_size}")
        counts += np.bincount(real, minlength=vocab_size)
    return counts


def unigram_perplexity(train: str, val: str, vocab_size: int | None = None, seq_len: int = 0) -> dict[str, float]:
    """Add-one unigram perplexity of ``val``'s targets with counts from ``train``."""
    vocab_size = vocab_size or manifest_vocab_size(train)
    if not vocab_size:
        raise DataError(f"{train}: the manifest records no tokenizer vocab_size; pass it explicitly")
    counts = token_counts(train, vocab_size, seq_len)
    log_p = np.log(counts + 1.0) - math.log(counts.sum() + vocab_size)
    nll, n = 0.0, 0
    for tokens in iter_token_samples(val):
        targets = (tokens[: seq_len + 1] if seq_len else tokens)[1:]
        targets = targets[targets >= 0]
        if targets.size and targets.max() >= vocab_size:
            raise DataError(f"{val}: token id {int(targets.max())} >= vocabulary size {vocab_size}")
        nll -= float(log_p[targets].sum())
        n += int(targets.size)
    if n == 0:
        raise DataError(f"{val}: no target tokens")
    return {"perplexity": math.exp(nll / n), "loss": nll / n, "val_tokens": n, "train_tokens": int(counts.sum()),
            "vocab_size": int(vocab_size)}


def run_baseline(run_dir: Path) -> dict[str, float]:
    """The unigram baseline on a finished run's own data.train / data.val (and task.seq_len crop)."""
    recipe_file = run_dir / "recipe.json"
    if not recipe_file.is_file():
        raise DataError(f"{run_dir} is not a corefm run folder (no recipe.json)")
    recipe = json.loads(recipe_file.read_text())
    data, task = recipe.get("data", {}), recipe.get("task", {})
    if not data.get("val"):
        raise DataError(f"{run_dir}: the recipe has no data.val to compare on")
    return unigram_perplexity(data["train"], data["val"], recipe["model"].get("vocab_size"), task.get("seq_len", 0))
