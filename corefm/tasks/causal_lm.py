"""Causal language modelling: next-token cross-entropy (+ optional z-loss), perplexity on held-out shards.

Shards hold ``tokens.npy``: an integer array of ``seq_len + 1`` token ids per sample (packed
documents), where negative ids mark padding (CoreNet-style chunk-and-pad shards) that is neither
attended to as a target nor counted. The model maps ``input_ids (B, T)`` to ``logits (B, T, V)``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from corefm.data.errors import SkipSample
from corefm.registry import register_task
from corefm.tasks.base import Task


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
        seq_len = self.cfg.seq_len

        def transform(sample: dict) -> dict:
            tokens = sample.get("tokens.npy", sample.get("npy"))
            if tokens is None:
                raise SkipSample(f"sample {sample.get('__key__')} has no tokens.npy")
            if isinstance(tokens, bytes):
                tokens = np.load(io.BytesIO(tokens), allow_pickle=False)
            tokens = np.asarray(tokens, dtype=np.int64)
            if seq_len:
                tokens = tokens[: seq_len + 1]
            return {"tokens": torch.from_numpy(tokens)}

        return transform

    def _losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed token NLL, summed z-loss term, token count, and correct next-token predictions."""
        tokens = batch["tokens"]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        valid = targets >= 0
        logits = self.model(inputs.clamp(min=0)).float()  # (B, T, V); padded inputs are masked out as targets
        nll = F.cross_entropy(logits.flatten(0, 1), targets.clamp(min=0).flatten(), reduction="none")
        nll = (nll * valid.flatten()).sum()
        z = (torch.logsumexp(logits, dim=-1).square() * valid).sum()
        correct = ((logits.argmax(-1) == targets) & valid).sum()
        return nll, z, valid.sum(), correct

    def forward(self, batch: dict[str, Any], mode: str = "train") -> dict[str, torch.Tensor]:
        nll, z, count, correct = self._losses(batch)
        if mode == "eval":
            return {"nll_sum": nll, "tokens": count.float(), "correct": correct.float()}
        n = count.clamp(min=1)
        ce = nll / n
        loss = ce + self.cfg.z_loss * z / n if self.cfg.z_loss else ce
        return {"loss": loss, "ce": ce.detach(), "num_tokens": count.float()}

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("tokens", 0.0), 1.0)
        nll = sums["nll_sum"] / n
        return {"loss": nll, "perplexity": math.exp(min(nll, 50.0)), "token_accuracy": sums["correct"] / n,
                "tokens": sums["tokens"]}


@register_task("causal_lm", CausalLMConfig)
def build_causal_lm(cfg: CausalLMConfig, model: torch.nn.Module, recipe: Any) -> Task:
    return CausalLMTask(cfg, model)
