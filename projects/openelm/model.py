"""OpenELM: corefm's DecoderLM with layer-wise scaling and the paper's initialisation.

The module names are Apple's without the ``transformer.`` prefix (``token_embeddings``,
``layers.{i}.attn.qkv_proj`` ...), so the HF/Apple state dict is this one with every key
prefixed (see :mod:`projects.openelm.convert`). Numerically it computes what Apple's HF port
computes: fused qkv split [q heads | k heads | v heads], RMSNorm per head on q and k, RoPE
(rotate-half, theta 10000) on normalised q/k, query head h reading KV head h // group,
SwiGLU with proj_1 = [gate | up], pre-norm RMSNorm (eps 1e-6) with the statistic in fp32, and
logits from the tied embedding matrix.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from corefm.nn import DecoderLM, RMSNorm
from corefm.registry import register_model
from projects.openelm.config import SIZES, OpenELMConfig, layer_specs


class OpenELM(DecoderLM):
    """input_ids (B, T) -> logits (B, T, vocab_size); ``forward_hidden`` gives (B, T, model_dim)."""

    def __init__(self, cfg: OpenELMConfig) -> None:
        super().__init__(
            vocab_size=cfg.vocab_size,
            dim=cfg.model_dim,
            layer_specs=layer_specs(cfg),
            norm="rms_norm",
            norm_eps=cfg.norm_eps,
            qk_norm=cfg.normalize_qk_projections,
            rope_theta=float(cfg.rope_freq_constant),
            max_len=cfg.rope_max_length,
            tie_embeddings=cfg.share_input_output_layers,
            bias=False,
            mlp="swiglu",
        )
        self.cfg = cfg
        self.gradient_checkpointing = cfg.activation_checkpointing
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Paper init: Linear N(0, fan_in^-0.5), embeddings N(0, d^-0.5), norms 1, and the two
        projections that write into the residual stream (attn.out_proj, ffn.proj_2) N(0, d^-0.5 (2L)^-0.5)
        so the residual's variance does not grow with depth. ``init: normal`` uses init_std instead.
        """
        cfg = self.cfg
        depth_scale = (2 * cfg.num_transformer_layers) ** -0.5
        fixed = cfg.init == "normal"
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if name.endswith(("attn.out_proj", "ffn.proj_2")):
                    std = (cfg.init_std if fixed else cfg.model_dim**-0.5) * depth_scale
                else:
                    std = cfg.init_std if fixed else module.in_features**-0.5
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, cfg.init_std if fixed else cfg.model_dim**-0.5)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """input_ids: (B, T) -> (B, T + n) with n <= max_new_tokens, decoded with a KV cache.

        temperature 0 is greedy; otherwise sample from softmax(logits / temperature), restricted
        to the top_k logits when top_k > 0. Generation stops early once every row has produced
        eos_token_id (rows that finished keep emitting it).
        """
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a non-empty (B, T) tensor, got shape {tuple(input_ids.shape)}")
        with self.decoding():
            return self._decode(input_ids, max_new_tokens, temperature, top_k, eos_token_id, generator)

    def _decode(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int,
                eos_token_id: int | None, generator: torch.Generator | None) -> torch.Tensor:
        cache = self.new_kv_cache()
        out = input_ids
        step_in = input_ids
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            # Only the last position's logits are needed: on the prompt that skips a (B, T, V) product.
            # (argmax and softmax in fp32: torch's CPU argmax over bf16 is ~5x slower than the cast + fp32 one)
            logits = self.logits(self.forward_hidden(step_in, kv_cache=cache)[:, -1]).float()
            if temperature <= 0:
                nxt = logits.argmax(dim=-1)
            else:
                logits = logits / temperature
                if top_k > 0:
                    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -math.inf)
                nxt = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]
            if eos_token_id is not None:
                nxt = nxt.masked_fill(done, eos_token_id)
                done |= nxt == eos_token_id
            out = torch.cat([out, nxt[:, None]], dim=1)
            step_in = nxt[:, None]
            if eos_token_id is not None and bool(done.all()):
                break
        return out


@register_model("openelm", OpenELMConfig, presets=SIZES)
def build_openelm(cfg: OpenELMConfig) -> OpenELM:
    return OpenELM(cfg)
