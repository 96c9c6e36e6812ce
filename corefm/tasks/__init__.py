"""Generic tasks shared by several projects (projects add their own in ``projects/<name>/task.py``)."""

from corefm.tasks import causal_lm, classification  # noqa: F401  (register their names)
from corefm.tasks.base import Task

__all__ = ["Task"]
