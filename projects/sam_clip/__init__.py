"""SAM-CLIP (arXiv 2310.15308): SAM and CLIP merged into one ViT by multi-task distillation with rehearsal.

Importing registers the recipe model ``sam_clip``, the task ``sam_clip`` and the ``corefm release``
writer for SAM-CLIP runs; :func:`add_cli` adds ``corefm data teacher-outputs`` and ``corefm sam-clip-eval``.
"""

from projects.sam_clip import model, release, task  # noqa: F401  (register model, release writer, task)
from projects.sam_clip.model import SamClipConfig, SamClipModel, build_sam, named_config

__all__ = ["SamClipConfig", "SamClipModel", "build_sam", "named_config"]


def add_cli(commands, data_commands) -> None:
    """``corefm data teacher-outputs``, ``corefm sam-clip-export-sam`` and ``corefm sam-clip-eval``."""
    from projects.sam_clip.cli import add_eval, add_export_sam, add_teacher_outputs

    add_teacher_outputs(data_commands)
    add_export_sam(commands)
    add_eval(commands)
