"""Pixel ViT image classifier: the smallest real recipe, and the baseline ByteFormer compares against."""

from projects.vit import model  # noqa: F401  (registers "vit_classifier")
