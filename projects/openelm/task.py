"""The ``openelm_lm`` task: causal LM training as ``causal_lm``, with the one-pass loss of :mod:`.loss`.

Same config (``CausalLMConfig``: z_loss, seq_len), shards, metrics and evaluation sums as
:class:`corefm.tasks.causal_lm.CausalLMTask`; only the loss over the logits is computed by
:func:`projects.openelm.loss.cross_entropy_z`, which reads the (B, T, V) logits once instead of
a dozen times (on this CPU a 2x faster training step for a 32k vocabulary at width 256).
"""

from __future__ import annotations

from typing import Any

import torch

from corefm.registry import register_task
from corefm.tasks.causal_lm import CausalLMConfig, CausalLMTask
from projects.openelm.loss import cross_entropy_z, eval_sums


class OpenELMLMTask(CausalLMTask):
    """batch {"tokens": (B, T + 1) long, negative = padding} -> losses (train) or additive sums (eval)."""

    def forward(self, batch: dict[str, Any], mode: str = "train") -> dict[str, torch.Tensor]:
        tokens = batch["tokens"]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits = self.model(inputs.clamp(min=0))  # (B, T, V) in the compute dtype
        if mode == "eval":
            nll, count, correct = eval_sums(logits, targets)
            return {"nll_sum": nll, "tokens": count.float(), "correct": correct.float()}
        loss, nll, _, count = cross_entropy_z(logits, targets, self.cfg.z_loss)
        return {"loss": loss, "ce": nll / count.clamp(min=1), "num_tokens": count.float()}


@register_task("openelm_lm", CausalLMConfig)
def build_openelm_lm(cfg: CausalLMConfig, model: torch.nn.Module, recipe: Any) -> OpenELMLMTask:
    return OpenELMLMTask(cfg, model)
