"""The three transformer stacks under one import path; each lives in its own file."""

from corefm.nn.decoder import DecoderLM, LayerSpec
from corefm.nn.text import TextTransformer
from corefm.nn.vit import VisionOutput, VisionTransformer

__all__ = ["DecoderLM", "LayerSpec", "TextTransformer", "VisionOutput", "VisionTransformer"]
