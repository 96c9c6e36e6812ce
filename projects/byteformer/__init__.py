"""ByteFormer (arXiv 2306.00238): classify images and audio from their raw file bytes.

What it provides is declared in pyproject.toml: the model ``byteformer`` (model.py), the task
``byte_classification`` (task.py), a release writer (release.py) and ``corefm byteformer
predict|speech-digits`` (cli.py). Importing this package imports none of them.
"""
