"""Fixed-size mixtures: every batch holds a set number of samples from each ``::``-separated source.

``data.mix: batch`` with ``data.weights: [w_1, ..., w_S]`` splits each per-rank batch of B samples
into n_i = B w_i / sum(w) (largest remainders, each source at least one) and streams every source on
its own: its own epochs, shuffling and workers (``data.num_workers`` shared out between sources),
each exactly resumable, so the mixture is too. This is the rehearsal of SAM-CLIP (arXiv 2310.15308):
a batch of the CLIP set and a batch of the SAM set every step, at fixed sizes, instead of a random
share per batch (``data.mix: shards``, weighted shard sampling). The sources' samples are joined
and collated in the main process.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch
from torch.utils.data import default_collate

from corefm.data.config import DataConfig
from corefm.data.errors import DataError

STATE_VERSION = 2


def as_list(samples: list[Any]) -> list[Any]:
    """The sources' workers hand back sample lists; the mixture collates them together."""
    return samples


def split_batch(batch_size: int, weights: list[float]) -> list[int]:
    """Per-source samples of a batch: proportional to ``weights``, largest remainders, each >= 1."""
    total = sum(weights)
    exact = [batch_size * w / total for w in weights]
    sizes = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: exact[i] - sizes[i], reverse=True)[: batch_size - sum(sizes)]:
        sizes[i] += 1
    if min(sizes) < 1:
        raise DataError(f"a batch of {batch_size} cannot hold every source at weights {weights} "
                        f"({sizes} samples): raise the batch size or the smaller weights")
    return sizes


def _pin(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.pin_memory()
    if isinstance(obj, dict):
        return {k: _pin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_pin(v) for v in obj)
    return obj


class MixedLoader:
    """One batch from each source's loader per step, joined and collated. The same interface as
    ``ResumableLoader``: ``state_dict()`` (``{"version", "mix": [source states]}``), ``stats()``,
    ``close()``, ``remapped``."""

    def __init__(self, loaders: list[Any], sizes: list[int], collate_fn: Callable[[list], Any],
                 pin_memory: bool) -> None:
        self.loaders, self.sizes, self.collate_fn, self.pin_memory = loaders, sizes, collate_fn, pin_memory
        self.remapped = "; ".join(f"source {i}: {ld.remapped}" for i, ld in enumerate(loaders) if ld.remapped)

    def __iter__(self) -> "MixedLoader":
        return self

    def __next__(self) -> Any:
        batch = self.collate_fn([sample for loader in self.loaders for sample in next(loader)])
        return _pin(batch) if self.pin_memory else batch

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "mix": [loader.state_dict() for loader in self.loaders]}

    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for loader in self.loaders:
            for key, value in loader.stats().items():
                total[key] = total.get(key, 0) + value
        return total

    def close(self) -> None:
        for loader in self.loaders:
            loader.close()


def build_mixed_loader(build_one: Callable[..., Any], sources: list[list[str]], cfg: DataConfig, *, rank: int,
                       world_size: int, batch_size: int, map_fn: Callable, collate_fn: Callable | None,
                       state: dict[str, Any] | None, world_state: list[dict[str, Any]] | None, drop_last: bool,
                       pin_memory: bool) -> MixedLoader:
    """``build_loader`` for ``cfg.mix == "batch"``; ``build_one`` builds one source's loader."""
    if len(cfg.weights) != len(sources) or len(sources) < 2:
        raise DataError(f"data.mix: batch needs '::'-separated sources and one data.weights entry each; got "
                        f"{len(sources)} source(s) and {len(cfg.weights)} weight(s)")
    if any(w <= 0 for w in cfg.weights):
        raise DataError(f"data.weights must all be > 0 with data.mix: batch, got {cfg.weights}")
    if 0 < cfg.num_workers < len(sources):
        raise DataError(f"data.num_workers ({cfg.num_workers}) is shared out between the {len(sources)} sources "
                        "of data.mix: batch: use 0 or at least one per source")
    for what, got in (("state", state), *((f"rank {r}'s state", s) for r, s in enumerate(world_state or []))):
        if got is not None and len(got.get("mix") or []) != len(sources):
            raise DataError(f"the saved data position ({what}) is not of a {len(sources)}-source data.mix: batch "
                            "(keep the recipe's data.mix and sources, or start without the saved data state)")
    sizes = split_batch(batch_size, [float(w) for w in cfg.weights])
    loaders = []
    for i, (urls, size) in enumerate(zip(sources, sizes)):
        # each source its own seed (so two sources never shuffle alike) and its share of the workers
        source_cfg = replace(cfg, mix="shards", weights=[], seed=cfg.seed * 1_000_003 + i,
                             num_workers=cfg.num_workers // len(sources))
        loaders.append(build_one(urls, source_cfg, rank=rank, world_size=world_size, batch_size=size,
                                 map_fn=map_fn, collate_fn=as_list, state=state["mix"][i] if state else None,
                                 world_state=[s["mix"][i] for s in world_state] if world_state else None,
                                 drop_last=drop_last, pin_memory=False))
    return MixedLoader(loaders, sizes, collate_fn or default_collate, pin_memory)
