"""CLIP + pseudo-labels (arXiv 2310.14108): contrastive image-text training with light task heads
learning from expert pseudo-labels, interoperable with open_clip.

Importing registers the recipe model ``clip``, the task ``clip`` and the ``corefm release``
writer for CLIP runs (an open_clip folder); :func:`add_cli` adds ``corefm data image-text``,
``corefm data pseudo-label`` and ``corefm clip-eval``.
"""

from projects.clip_pseudo import model, release, task  # noqa: F401  (register model, task, release writer)
from projects.clip_pseudo.config import ClipConfig, named_config
from projects.clip_pseudo.model import ClipModel
from projects.clip_pseudo.openclip_io import load_open_clip_checkpoint, save_open_clip

__all__ = ["ClipConfig", "ClipModel", "load_open_clip_checkpoint", "named_config", "save_open_clip"]


def add_cli(commands, data_commands) -> None:
    """``corefm data image-text``, ``corefm data pseudo-label`` and ``corefm clip-eval``."""
    from projects.clip_pseudo.cli import add_clip_eval, add_data_tools

    add_data_tools(data_commands)
    add_clip_eval(commands)
