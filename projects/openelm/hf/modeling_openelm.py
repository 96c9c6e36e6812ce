"""Hugging Face OpenELM: ``OpenELMForCausalLM`` with the state-dict names of Apple's checkpoints.

Self-contained (imports only torch, transformers and the sibling configuration file) because a
release folder ships it for ``trust_remote_code=True`` users who do not have corefm.

Computation per layer (pre-norm, no biases):
    x = x + out_proj(attn(rope(q_norm(q)), rope(k_norm(k)), v))   q, k, v from qkv_proj(attn_norm(x))
    x = x + proj_2(act(gate) * up)                                 [gate | up] = proj_1(ffn_norm(x))
qkv_proj's output is [q heads | k heads | v heads], each head contiguous; query head h reads KV
head h // (n_q / n_kv). Keys are cached after RoPE in a transformers ``Cache`` (a DynamicCache
unless generate() passes another), so every step rotates only the new tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_openelm import OpenELMConfig


class OpenELMRMSNorm(nn.Module):
    """x: (..., dim) -> (..., dim); the mean of squares is taken in float32, then cast back."""

    def __init__(self, num_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions: (B, T) long -> cos, sin: (B, 1, T, head_dim) float32; both halves share frequencies."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # (B, T, head_dim / 2)
    emb = torch.cat((angles, angles), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, hd) rotated in float32 (rotate-half convention), returned in x's dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat((-x2, x1), dim=-1) * sin).type_as(x)


class OpenELMMultiHeadCausalAttention(nn.Module):
    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_q_heads = config.num_query_heads[layer_idx]
        self.num_kv_heads = config.num_kv_heads[layer_idx]
        self.rope_theta = float(config.rope_freq_constant)
        total_heads = self.num_q_heads + 2 * self.num_kv_heads
        self.qkv_proj = nn.Linear(config.model_dim, total_heads * self.head_dim, bias=False)
        if config.normalize_qk_projections:
            self.q_norm = OpenELMRMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = OpenELMRMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.out_proj = nn.Linear(self.num_q_heads * self.head_dim, config.model_dim, bias=False)
        self.out_proj.is_residual_projection = True  # read by _init_weights

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        past_key_values: Cache | None,
    ) -> torch.Tensor:
        """x: (B, T, D), cos/sin: (B, 1, T, hd), mask: bool (B, 1, T, S) or None (plain causal) -> (B, T, D)."""
        b, t, _ = x.shape
        qkv = self.qkv_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.num_q_heads, self.num_kv_heads, self.num_kv_heads], dim=1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        groups = self.num_q_heads // self.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        if mask is None:
            # No padding and no cache offset: SDPA's causal mask is exact (one new token sees all keys).
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.num_q_heads * self.head_dim))


class OpenELMFeedForwardNetwork(nn.Module):
    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        hidden = config.ffn_dims[layer_idx]
        self.ffn_with_glu = config.ffn_with_glu
        self.proj_1 = nn.Linear(config.model_dim, (2 if self.ffn_with_glu else 1) * hidden, bias=False)
        self.proj_2 = nn.Linear(hidden, config.model_dim, bias=False)
        self.proj_2.is_residual_projection = True
        self.act = ACT2FN[config.activation_fn_name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D); with GLU proj_1's output is [gate | up]."""
        if self.ffn_with_glu:
            gate, up = self.proj_1(x).chunk(2, dim=-1)
            return self.proj_2(self.act(gate) * up)
        return self.proj_2(self.act(self.proj_1(x)))


class OpenELMDecoderLayer(nn.Module):
    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn = OpenELMMultiHeadCausalAttention(config, layer_idx)
        self.ffn = OpenELMFeedForwardNetwork(config, layer_idx)
        self.attn_norm = OpenELMRMSNorm(config.model_dim, config.rms_norm_eps)
        self.ffn_norm = OpenELMRMSNorm(config.model_dim, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, past_key_values):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, past_key_values)
        return x + self.ffn(self.ffn_norm(x))


class OpenELMPreTrainedModel(PreTrainedModel):
    config_class = OpenELMConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["OpenELMDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The paper's init: N(0, fan_in^-0.5); residual projections N(0, d^-0.5 (2L)^-0.5); norms 1."""
        cfg = self.config
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                std = cfg.model_dim**-0.5 * (2 * cfg.num_transformer_layers) ** -0.5
            else:
                std = module.in_features**-0.5
            nn.init.normal_(module.weight, 0.0, std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, module.embedding_dim**-0.5)
        elif isinstance(module, OpenELMRMSNorm):
            nn.init.ones_(module.weight)


def build_mask(
    attention_mask: torch.Tensor | None, q_len: int, past: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean (B|1, 1, q_len, past + q_len) mask, True = may attend, or None for plain causal.

    The new tokens are the last q_len of past + q_len positions: query i sees keys j <= past + i.
    attention_mask: (B, past + q_len) with 1 for real tokens (left or right padding), or an
    already-built 4D mask (bool, or float where 0 means attend), which is passed through.
    """
    if attention_mask is not None and attention_mask.ndim == 4:
        return attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded and (past == 0 or q_len == 1):
        return None  # SDPA's is_causal (or no mask for one new token) is exact here
    kv_len = past + q_len
    mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(diagonal=past)[None, None]
    if padded:
        if attention_mask.shape[-1] != kv_len:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} tokens, expected past + new = {kv_len}")
        mask = mask & attention_mask.bool()[:, None, None, :]
    # A query row with no visible key (a left-pad token) would give NaN in SDPA; letting it see
    # everything keeps it finite, and no real token ever reads a pad position's output.
    return mask | ~mask.any(dim=-1, keepdim=True)


class OpenELMModel(OpenELMPreTrainedModel):
    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.model_dim)
        self.layers = nn.ModuleList(OpenELMDecoderLayer(config, i) for i in range(config.num_transformer_layers))
        self.norm = OpenELMRMSNorm(config.model_dim, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.token_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        """input_ids: (B, T) -> last_hidden_state (B, T, model_dim) after the final norm."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputing a layer would append to the cache twice
        x = self.token_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        cache = past_key_values if use_cache else None
        past = cache.get_seq_length() if cache is not None else 0
        t = x.shape[1]
        if position_ids is None:
            if attention_mask is not None and attention_mask.ndim == 2 and not bool(attention_mask.all()):
                # Left padding: count positions from each row's first real token.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
            else:
                position_ids = torch.arange(past, past + t, device=x.device)[None]
        position_ids = position_ids.expand(x.shape[0], -1)
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, float(self.config.rope_freq_constant))
        mask = build_mask(attention_mask, t, past, x.device)
        hidden_states = [] if output_hidden_states else None
        for layer in self.layers:
            if hidden_states is not None:
                hidden_states.append(x)
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, mask, None, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache)
        x = self.norm(x)
        if hidden_states is not None:
            hidden_states.append(x)
        out = BaseModelOutputWithPast(last_hidden_state=x, past_key_values=cache,
                                      hidden_states=tuple(hidden_states) if hidden_states is not None else None)
        return out if (return_dict if return_dict is not None else self.config.return_dict) else out.to_tuple()


class OpenELMForCausalLM(OpenELMPreTrainedModel, GenerationMixin):
    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__(config)
        self.transformer = OpenELMModel(config)
        # Apple's checkpoints share input and output embeddings by computing the logits from
        # token_embeddings.weight; there is then no lm_head at all (and no lm_head.weight key).
        self.lm_head = None if config.share_input_output_layers else nn.Linear(config.model_dim, config.vocab_size,
                                                                                 bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.token_embeddings = value

    def get_output_embeddings(self) -> nn.Linear | None:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def get_decoder(self) -> OpenELMModel:
        return self.transformer

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """input_ids: (B, T) -> logits (B, T, vocab_size) (the last logits_to_keep positions if > 0).

        labels: (B, T), -100 = ignore; the loss is next-token cross-entropy (shifted inside).
        """
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                               output_hidden_states=output_hidden_states, return_dict=True)
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            h = h[:, -logits_to_keep:] if logits_to_keep > 0 else h
        else:
            h = h[:, logits_to_keep]
        logits = self.lm_head(h) if self.lm_head is not None else F.linear(h, self.transformer.token_embeddings.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        result = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                        hidden_states=out.hidden_states)
        return result if (return_dict if return_dict is not None else self.config.return_dict) else result.to_tuple()


__all__ = ["OpenELMForCausalLM", "OpenELMModel", "OpenELMPreTrainedModel"]
