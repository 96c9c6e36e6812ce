"""MobileViT v1 / v2 image classifiers on corefm's MobileViT towers (corefm/nn/mobilevit.py).

Its model ``mobilevit`` (model.py) is declared in pyproject.toml.
"""
