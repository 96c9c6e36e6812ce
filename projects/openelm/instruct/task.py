"""Recipe task ``instruct_lm``: next-token cross-entropy on response tokens only, over packed rows.

A batch is ``{"tokens", "labels", "segments"}`` (B, T) from ``corefm openelm instruct-pack`` shards
(:mod:`projects.openelm.instruct.packing`). The model gets the tokens and the segments (so the
examples of a row do not see each other), and position t is scored against labels[t + 1] where
that is a response token of the same example; everything else (the prompt, the chat template,
padding, the step from one example into the next) counts nowhere. Evaluation sums the response
tokens' negative log-likelihood: ``loss`` is the mean held-out response loss in nats per token.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from corefm.data import DataError
from corefm.data.errors import SkipSample
from corefm.errors import ConfigError
from corefm.registry import register_task
from corefm.tasks.base import Task, TaskContext
from corefm.tasks.lm_loss import cross_entropy_z, eval_sums
from projects.openelm.instruct.chat import IGNORE
from projects.openelm.instruct.packing import next_token_targets

FIELDS = ("tokens", "labels", "segments")


@dataclass
class InstructLMConfig:
    # z-loss weight on log(sum(exp(logits)))^2 over the response tokens; 0 turns it off.
    z_loss: float = 0.0


def _array(sample: dict, name: str, where: str) -> np.ndarray:
    value = sample.get(f"{name}.npy")
    if value is None:
        raise SkipSample(f"{where} has no {name}.npy (not an `instruct-pack` shard)")
    if isinstance(value, bytes):
        try:
            value = np.load(io.BytesIO(value), allow_pickle=False)
        except ValueError as e:
            raise SkipSample(f"{where}: {name}.npy does not load without pickle ({e})") from None
    value = np.asarray(value)
    if value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
        raise SkipSample(f"{where}: {name}.npy must be a 1-D integer array, got {value.ndim}-D {value.dtype}")
    return value


class InstructLMTask(Task):
    def __init__(self, cfg: InstructLMConfig, model: torch.nn.Module):
        super().__init__(model)
        self.cfg = cfg

    def sample_transform(self, train: bool) -> Callable[[dict], dict]:
        vocab = getattr(self.model, "vocab_size", None)

        def transform(sample: dict) -> dict:
            where = f"sample {sample.get('__key__')}"
            tokens, labels, segments = (_array(sample, name, where) for name in FIELDS)
            if not len(tokens) == len(labels) == len(segments) or len(tokens) < 2:
                raise SkipSample(f"{where}: tokens/labels/segments have lengths {len(tokens)}/{len(labels)}/"
                                 f"{len(segments)}; they must be equal and at least 2")
            if vocab is not None and (int(tokens.max()) >= vocab or int(tokens.min()) < 0):
                raise SkipSample(f"{where}: token ids outside the model's vocabulary 0..{vocab - 1}")
            response = labels != IGNORE
            if np.any(labels[response] != tokens[response]):
                raise SkipSample(f"{where}: a label is neither -100 nor its token's id")
            return {name: torch.from_numpy(a.astype(np.int64)) for name, a in zip(FIELDS, (tokens, labels, segments))}

        return transform

    def collate(self, samples: list[dict]) -> dict:
        lengths = sorted({len(s["tokens"]) for s in samples})
        if len(lengths) > 1:
            raise DataError(f"packed rows of different lengths {lengths} in one batch: pack every data set of a "
                            "run with the same --seq-len")
        return super().collate(samples)

    def forward(self, batch: dict[str, Any], mode: str = "train") -> dict[str, torch.Tensor]:
        tokens, segments = batch["tokens"], batch["segments"]
        targets = next_token_targets(batch["labels"], segments)
        logits = self.model(tokens, segments=segments)
        if mode == "eval":
            nll, count, correct = eval_sums(logits, targets)
            return {"nll_sum": nll, "tokens": count.float(), "correct": correct.float()}
        loss, nll, _, count = cross_entropy_z(logits, targets, self.cfg.z_loss, overwrite_logits=True)
        # tokens/s counts every real (non-padding) token the model ran, not only the scored ones
        return {"loss": loss, "ce": nll / count.clamp(min=1), "num_tokens": (segments > 0).sum().float()}

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("tokens", 0.0), 1.0)
        nll = sums.get("nll_sum", 0.0) / n
        return {"loss": nll, "perplexity": math.exp(min(nll, 50.0)), "token_accuracy": sums.get("correct", 0.0) / n,
                "tokens": sums.get("tokens", 0.0)}


@register_task("instruct_lm", InstructLMConfig)
def build_instruct_lm(cfg: InstructLMConfig, model: torch.nn.Module, context: TaskContext) -> Task:
    if not hasattr(model, "forward_hidden") or "segments" not in model.forward.__code__.co_varnames:
        raise ConfigError("task instruct_lm needs a model that takes segments (model.name: openelm_finetune)")
    return InstructLMTask(cfg, model)
