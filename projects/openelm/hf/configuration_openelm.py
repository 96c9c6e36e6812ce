"""Hugging Face configuration for OpenELM, compatible with Apple's published ``config.json``.

Self-contained (imports only ``transformers``): a release folder ships this file beside
``config.json`` so ``trust_remote_code=True`` works without corefm installed.

Field names and defaults are those of Apple's HF port. The per-layer widths are derived the way
Apple's config derives them and written into ``config.json``: ``num_query_heads`` and
``num_kv_heads`` become per-layer lists and ``ffn_multipliers`` the per-layer list of FFN
multipliers, so a saved config reads back to the same model.
"""

from __future__ import annotations

from transformers import PretrainedConfig


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Nearest multiple of divisor (at least min_value); adds a divisor if rounding lost > 10%."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def _per_layer(mult, num_layers: int, name: str) -> list[float]:
    """A number, a (first, last) pair spaced linearly (as numpy.linspace, rounded to 2 decimals)
    or an explicit per-layer list -> one multiplier per layer."""
    if isinstance(mult, (int, float)):
        return [float(mult)] * num_layers
    mult = [float(m) for m in mult]
    if len(mult) == 2:
        if num_layers == 1:
            return [round(mult[0], 2)]
        step = (mult[1] - mult[0]) / (num_layers - 1)
        return [round(i * step + mult[0], 2) for i in range(num_layers - 1)] + [round(mult[1], 2)]
    if len(mult) == num_layers:
        return mult
    raise ValueError(f"{name} must be a number, a (first, last) pair or {num_layers} values; got {len(mult)} values")


class OpenELMConfig(PretrainedConfig):
    """Configuration of an OpenELM decoder with layer-wise scaling (arXiv 2404.14619).

    ``num_gqa_groups`` is the number of query heads that share one KV head (Apple's name).
    """

    model_type = "openelm"
    # Standard names that generic transformers code (caches, generation) looks up.
    attribute_map = {
        "num_hidden_layers": "num_transformer_layers",
        "hidden_size": "model_dim",
        "max_position_embeddings": "max_context_length",
    }

    def __init__(
        self,
        vocab_size: int = 32000,
        max_context_length: int = 2048,
        num_transformer_layers: int = 12,
        model_dim: int = 2048,
        head_dim: int = 128,
        qkv_multipliers: float | list[float] = 1.0,
        num_query_heads: int | list[int] | None = None,
        num_kv_heads: list[int] | None = None,
        num_gqa_groups: int = 1,
        ffn_multipliers: float | list[float] = 4.0,
        ffn_with_glu: bool = True,
        ffn_dim_divisor: int = 256,
        activation_fn_name: str = "swish",
        normalization_layer_name: str = "rms_norm",
        normalize_qk_projections: bool = False,
        share_input_output_layers: bool = False,
        rope_freq_constant: int = 10000,
        rope_max_length: int = 4096,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        bos_token_id: int | None = 1,
        eos_token_id: int | list[int] | None = 2,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.max_context_length = max_context_length
        self.num_transformer_layers = num_transformer_layers
        self.model_dim = model_dim
        self.head_dim = head_dim
        self.qkv_multipliers = qkv_multipliers
        self.num_gqa_groups = num_gqa_groups
        self.ffn_with_glu = ffn_with_glu
        self.ffn_dim_divisor = ffn_dim_divisor
        self.activation_fn_name = activation_fn_name
        self.normalization_layer_name = normalization_layer_name
        self.normalize_qk_projections = normalize_qk_projections
        self.share_input_output_layers = share_input_output_layers
        self.rope_freq_constant = rope_freq_constant
        self.rope_max_length = rope_max_length
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        if normalization_layer_name != "rms_norm":
            raise ValueError(f"normalization_layer_name {normalization_layer_name!r} is not supported (rms_norm is)")
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")

        n = num_transformer_layers
        groups = num_gqa_groups or 1
        alphas = _per_layer(qkv_multipliers, n, "qkv_multipliers")
        q_dims = [make_divisible(model_dim * a, head_dim * groups) for a in alphas]
        self.num_query_heads = [q // head_dim for q in q_dims]
        self.num_kv_heads = [h // groups for h in self.num_query_heads]
        # A saved config carries the derived lists; they must agree with the multipliers, or the
        # weights would not fit (Apple's config silently recomputes and would fail at load).
        for name, given, derived in (("num_query_heads", num_query_heads, self.num_query_heads),
                                     ("num_kv_heads", num_kv_heads, self.num_kv_heads)):
            if isinstance(given, (list, tuple)) and list(given) != derived:
                raise ValueError(f"{name} {list(given)} disagrees with qkv_multipliers/num_gqa_groups ({derived})")
        self.ffn_multipliers = _per_layer(ffn_multipliers, n, "ffn_multipliers")
        super().__init__(**kwargs)

    @property
    def ffn_dims(self) -> list[int]:
        """Hidden width of each layer's FFN (the GLU's gate and up halves are each this wide)."""
        return [make_divisible(m * self.model_dim, self.ffn_dim_divisor) for m in self.ffn_multipliers]
