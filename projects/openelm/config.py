"""OpenELM's recipe-facing configuration and its layer-wise scaling (arXiv 2404.14619, §2).

Layer i of N gets attention and FFN widths from two multipliers linearly spaced over the depth
and rounded to 2 decimals (as Apple's configuration does with ``round(v, 2)``):

    alpha_i = linspace(qkv_multipliers)[i]      q_dim_i = make_divisible(d * alpha_i, head_dim * groups)
    beta_i  = linspace(ffn_multipliers)[i]      ffn_i   = make_divisible(d * beta_i, ffn_dim_divisor)
    n_q_i   = q_dim_i / head_dim                n_kv_i  = n_q_i / groups

so early layers are narrow and late layers wide. Field names follow Apple's HF ``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from corefm.errors import ConfigError
from corefm.nn import LayerSpec


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Round v to the nearest multiple of divisor, at least min_value (default divisor).

    If rounding down lost more than 10% of v, one more divisor is added (MobileNet's rule,
    used by CoreNet/OpenELM for head and FFN widths).
    """
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def linspace(start: float, stop: float, num: int) -> list[float]:
    """numpy.linspace(start, stop, num) in plain Python, with the same float arithmetic.

    numpy computes start + i * step and pins the last value to stop; matching it bit for bit
    matters because the values are then rounded to 2 decimals, where a last-bit difference
    could flip a width.
    """
    if num == 1:
        return [float(start)]
    step = (stop - start) / (num - 1)
    return [i * step + start for i in range(num - 1)] + [float(stop)]


def layer_multipliers(mult: float | tuple[float, ...] | list[float], num_layers: int, name: str) -> list[float]:
    """A scalar (same for all layers), a (first, last) pair (linear, 2 decimals) or a per-layer list."""
    if isinstance(mult, (int, float)):
        return [float(mult)] * num_layers
    mult = [float(m) for m in mult]
    if len(mult) == 2:
        return [round(v, 2) for v in linspace(mult[0], mult[1], num_layers)]
    if len(mult) == num_layers:
        return mult
    raise ConfigError(f"model.{name}: need a number, a (first, last) pair or {num_layers} values, got {len(mult)}")


@dataclass
class OpenELMConfig:
    """An OpenELM model. Defaults are OpenELM-270M with the HF port's 32,000-token vocabulary."""

    num_transformer_layers: int = 16
    model_dim: int = 1280
    head_dim: int = 64
    # Query heads per KV head (Apple's name; it is the GQA group size, not the number of groups).
    num_gqa_groups: int = 4
    # A number (uniform), a (first, last) pair (layer-wise scaling) or one value per layer.
    qkv_multipliers: float | tuple[float, ...] = (0.5, 1.0)
    ffn_multipliers: float | tuple[float, ...] = (0.5, 4.0)
    ffn_dim_divisor: int = 256
    vocab_size: int = 32000
    max_context_length: int = 2048
    rope_freq_constant: int = 10000
    # Length of the precomputed RoPE table (Apple: twice the context); tables grow when needed.
    rope_max_length: int = 4096
    normalize_qk_projections: bool = True
    share_input_output_layers: bool = True
    norm_eps: float = 1e-6
    activation_checkpointing: bool = False
    # "openelm": the paper's N(0, fan_in^-0.5), residual projections N(0, d^-0.5 (2L)^-0.5).
    # "normal": every weight N(0, init_std), residual projections N(0, init_std (2L)^-0.5).
    init: Literal["openelm", "normal"] = "openelm"
    init_std: float = 0.02
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self) -> None:
        for key in ("num_transformer_layers", "model_dim", "head_dim", "num_gqa_groups", "ffn_dim_divisor",
                    "vocab_size", "max_context_length"):
            if int(getattr(self, key)) <= 0:
                raise ConfigError(f"model.{key} must be positive, got {getattr(self, key)}")
        if self.head_dim % 2:
            raise ConfigError(f"model.head_dim must be even for RoPE, got {self.head_dim}")
        if self.init_std <= 0:
            raise ConfigError(f"model.init_std must be positive, got {self.init_std}")
        # Fail at recipe-parse time, not when the model is built.
        layer_multipliers(self.qkv_multipliers, self.num_transformer_layers, "qkv_multipliers")
        layer_multipliers(self.ffn_multipliers, self.num_transformer_layers, "ffn_multipliers")


def layer_specs(cfg: OpenELMConfig) -> list[LayerSpec]:
    """Per-layer (query heads, KV heads, head_dim, FFN width) by OpenELM's layer-wise scaling."""
    n = cfg.num_transformer_layers
    alphas = layer_multipliers(cfg.qkv_multipliers, n, "qkv_multipliers")
    betas = layer_multipliers(cfg.ffn_multipliers, n, "ffn_multipliers")
    specs = []
    for alpha, beta in zip(alphas, betas):
        q_dim = make_divisible(cfg.model_dim * alpha, cfg.head_dim * cfg.num_gqa_groups)
        n_q = q_dim // cfg.head_dim
        ffn = make_divisible(cfg.model_dim * beta, cfg.ffn_dim_divisor)
        specs.append(LayerSpec(num_heads=n_q, num_kv_heads=n_q // cfg.num_gqa_groups, head_dim=cfg.head_dim,
                               ffn_dim=ffn))
    return specs


# The four published sizes (paper Table 1 / Apple's OpenELM_CONFIGS) and two small ones for
# tests and CPU demos: a recipe's `model: {name: openelm, preset: openelm_1_1b}`. Everything not
# listed takes the dataclass default.
SIZES: dict[str, dict] = {
    "openelm_270m": dict(num_transformer_layers=16, model_dim=1280, head_dim=64),
    "openelm_450m": dict(num_transformer_layers=20, model_dim=1536, head_dim=64),
    "openelm_1_1b": dict(num_transformer_layers=28, model_dim=2048, head_dim=64),
    "openelm_3b": dict(num_transformer_layers=36, model_dim=3072, head_dim=128),
    # 4 layers, 2->4 query heads of 16 and 1->2 KV heads (groups of 2), FFN 32->256.
    "tiny": dict(num_transformer_layers=4, model_dim=64, head_dim=16, num_gqa_groups=2, ffn_dim_divisor=32,
                 vocab_size=512, max_context_length=256, rope_max_length=512),
    # A few-million-parameter model that trains visibly on a CPU in minutes.
    "demo": dict(num_transformer_layers=6, model_dim=256, head_dim=32, num_gqa_groups=2, ffn_dim_divisor=64,
                 vocab_size=8000, max_context_length=512, rope_max_length=1024),
}


def named_config(name: str, **overrides) -> OpenELMConfig:
    """OpenELMConfig for a named size ("openelm_270m", ..., "tiny", "demo") with field overrides."""
    if name not in SIZES:
        raise ConfigError(f"unknown OpenELM size {name!r} (known: {', '.join(SIZES)})")
    return replace(OpenELMConfig(**SIZES[name]), **overrides)


def openelm_270m(**overrides) -> OpenELMConfig:
    return named_config("openelm_270m", **overrides)


def openelm_450m(**overrides) -> OpenELMConfig:
    return named_config("openelm_450m", **overrides)


def openelm_1_1b(**overrides) -> OpenELMConfig:
    return named_config("openelm_1_1b", **overrides)


def openelm_3b(**overrides) -> OpenELMConfig:
    return named_config("openelm_3b", **overrides)


def tiny(**overrides) -> OpenELMConfig:
    return named_config("tiny", **overrides)


def demo(**overrides) -> OpenELMConfig:
    return named_config("demo", **overrides)
