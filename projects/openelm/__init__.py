"""OpenELM (arXiv 2404.14619): layer-wise scaled decoder LM, HF format both ways, LLaMA tokenizer.

What it provides is declared in pyproject.toml: the model ``openelm`` (model.py), the Hugging Face
release writer (release.py) and ``corefm openelm ...`` (cli.py). Importing this package imports
none of them; ``projects.openelm.hf`` registers the ``openelm`` model type with transformers.
"""
