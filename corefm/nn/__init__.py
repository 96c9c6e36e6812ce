"""Shared neural-network blocks: norms, MLPs, embeddings, attention, blocks, towers (ViT, text, MobileViT)."""

from corefm.nn.attention import Attention, build_attention_mask, sdpa
from corefm.nn.block import LayerScale, TransformerBlock
from corefm.nn.decoder import DecoderLM, LayerSpec
from corefm.nn.embeddings import LearnedPositions, PatchEmbed, RotaryEmbedding, apply_rotary, rotate_half
from corefm.nn.kv_cache import KVCache
from corefm.nn.mlp import GELUMLP, SwiGLU, build_mlp
from corefm.nn.mobilevit import MobileViT, MobileViTOutput, MobileViTv2, build_mobilevit_tower
from corefm.nn.mobilevit_blocks import LinearAttnFFN, MobileViTBlock, MobileViTv2Block, SeparableSelfAttention
from corefm.nn.norms import RMSNorm, build_norm
from corefm.nn.pooling import cls_pool, eot_pool, masked_mean, max_pool
from corefm.nn.text import TextTransformer
from corefm.nn.token_merge import TokenMerge
from corefm.nn.vit import VisionOutput, VisionTransformer
from corefm.nn.window import WindowedAttention, window_partition_2d, window_unpartition_2d

__all__ = [
    "Attention",
    "DecoderLM",
    "GELUMLP",
    "KVCache",
    "LayerScale",
    "LayerSpec",
    "LearnedPositions",
    "LinearAttnFFN",
    "MobileViT",
    "MobileViTBlock",
    "MobileViTOutput",
    "MobileViTv2",
    "MobileViTv2Block",
    "PatchEmbed",
    "RMSNorm",
    "RotaryEmbedding",
    "SeparableSelfAttention",
    "SwiGLU",
    "TextTransformer",
    "TokenMerge",
    "TransformerBlock",
    "VisionOutput",
    "VisionTransformer",
    "WindowedAttention",
    "apply_rotary",
    "build_attention_mask",
    "build_mlp",
    "build_mobilevit_tower",
    "build_norm",
    "cls_pool",
    "eot_pool",
    "masked_mean",
    "max_pool",
    "rotate_half",
    "sdpa",
    "window_partition_2d",
    "window_unpartition_2d",
]
