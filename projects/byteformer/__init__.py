"""ByteFormer (arXiv 2306.00238): classify images and audio from their raw file bytes.

Importing registers the recipe model ``byteformer``, the task ``byte_classification`` and the
``corefm release`` writer for ByteFormer runs; :func:`add_cli` adds ``corefm predict`` and
``corefm data speech-digits``.
"""

from projects.byteformer import model, release, task  # noqa: F401  (register model, release writer, task)
from projects.byteformer.model import PAD, ByteFormer, ByteFormerConfig

__all__ = ["PAD", "ByteFormer", "ByteFormerConfig"]


def add_cli(commands, data_commands) -> None:
    """``corefm predict MODEL FILE...`` and ``corefm data speech-digits --out DIR``."""
    from projects.byteformer.cli import add_predict, add_speech_digits

    add_predict(commands)
    add_speech_digits(data_commands)
