"""CLIP + pseudo-labels (arXiv 2310.14108): contrastive image-text training with light task heads
learning from expert pseudo-labels, interoperable with open_clip.

What it provides is declared in pyproject.toml: the model ``clip`` (model.py), the task ``clip``
(task.py), the open_clip release writer (release.py) and ``corefm clip image-text|pseudo-label|eval``
(cli.py). Importing this package imports none of them.
"""
