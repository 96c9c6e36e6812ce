"""Pixel ViT image classifier: the smallest real recipe, and the baseline ByteFormer compares against.

Its model ``vit_classifier`` (model.py) is declared in pyproject.toml.
"""
