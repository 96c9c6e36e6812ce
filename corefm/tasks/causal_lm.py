"""Causal language modelling: next-token cross-entropy (+ optional z-loss), perplexity on held-out shards.

Shards hold ``tokens.npy``: an integer array of ``seq_len + 1`` token ids per sample (packed
documents), where negative ids mark padding (CoreNet-style chunk-and-pad shards) that is neither
attended to as a target nor counted. The model maps ``input_ids (B, T)`` to ``logits (B, T, V)`` in its compute dtype; the loss
(:mod:`corefm.tasks.lm_loss`) reads them once, block by block, instead of materialising fp32 logits,
log-probabilities and their gradients (on a CPU that was 2x the step time of a small 32k-vocab LM).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from corefm.data.errors import SkipSample
from corefm.registry import register_task
from corefm.tasks.base import Task, TaskContext
from corefm.tasks.lm_loss import cross_entropy_z, eval_sums


@dataclass
class CausalLMConfig:
    # z-loss weight on log(sum(exp(logits)))^2 (PaLM; OpenELM uses 1e-4); 0 turns it off.
    z_loss: float = 0.0
    # Crop samples to this many input tokens (0 = use the shard's length).
    seq_len: int = 0


class CausalLMTask(Task):
    def __init__(self, cfg: CausalLMConfig, model: torch.nn.Module):
        super().__init__(model)
        self.cfg = cfg

    def sample_transform(self, train: bool) -> Callable[[dict], dict]:
        seq_len, vocab = self.cfg.seq_len, getattr(self.model, "vocab_size", None)

        def transform(sample: dict) -> dict:
            where = f"sample {sample.get('__key__')}"
            tokens = sample.get("tokens.npy", sample.get("npy"))
            if tokens is None:
                raise SkipSample(f"{where} has no tokens.npy")
            if isinstance(tokens, bytes):
                try:
                    tokens = np.load(io.BytesIO(tokens), allow_pickle=False)
                except ValueError as e:  # an object array (it would need unpickling), a bad header
                    raise SkipSample(f"{where}: tokens.npy does not load without pickle ({e})") from None
            tokens = np.asarray(tokens)
            # Checked, never converted: a float array cast to ints would turn -0.3 padding into token 0.
            if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
                raise SkipSample(f"{where}: tokens.npy must be a 1-D integer array, got {tokens.ndim}-D "
                                 f"{tokens.dtype}")
            if seq_len:
                tokens = tokens[: seq_len + 1]
            if len(tokens) < 2:
                raise SkipSample(f"{where}: tokens.npy holds {len(tokens)} token(s); a sample needs at least 2")
            if vocab is not None and len(tokens) and int(tokens.max()) >= vocab:
                raise SkipSample(f"{where}: token id {int(tokens.max())} >= the model's vocabulary ({vocab})")
            return {"tokens": torch.from_numpy(tokens.astype(np.int64))}

        return transform

    def forward(self, batch: dict[str, Any], mode: str = "train") -> dict[str, torch.Tensor]:
        """batch {"tokens": (B, T + 1) long, negative = padding} -> losses (train) or additive sums (eval)."""
        tokens = batch["tokens"]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits = self.model(inputs.clamp(min=0))  # (B, T, V); padded inputs are masked out as targets
        if mode == "eval":
            nll, count, correct = eval_sums(logits, targets)
            return {"nll_sum": nll, "tokens": count.float(), "correct": correct.float()}
        loss, nll, _, count = cross_entropy_z(logits, targets, self.cfg.z_loss, overwrite_logits=True)
        return {"loss": loss, "ce": nll / count.clamp(min=1), "num_tokens": count.float()}

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("tokens", 0.0), 1.0)
        nll = sums["nll_sum"] / n
        return {"loss": nll, "perplexity": math.exp(min(nll, 50.0)), "token_accuracy": sums["correct"] / n,
                "tokens": sums["tokens"]}


@register_task("causal_lm", CausalLMConfig)
def build_causal_lm(cfg: CausalLMConfig, model: torch.nn.Module, context: TaskContext) -> Task:
    return CausalLMTask(cfg, model)
