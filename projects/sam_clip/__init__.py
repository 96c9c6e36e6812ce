"""SAM-CLIP (arXiv 2310.15308): SAM and CLIP merged into one ViT by multi-task distillation with rehearsal.

What it provides is declared in pyproject.toml: the model ``sam_clip`` (model.py), the task
``sam_clip`` (task.py), a release writer (release.py) and ``corefm sam-clip
teacher-outputs|export-sam|eval`` (cli.py). Importing this package imports none of them.
"""
