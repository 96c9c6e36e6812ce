"""Exceptions of the data package.

`DataError` is the one error type a user sees for bad data or a bad data config: its message is
one line that the CLI prints as is. `SkipSample` is raised by a user `map_fn` to drop one sample
(bad caption, undecodable image); the stream counts and skips it.
"""

from __future__ import annotations

from corefm.errors import CorefmError

_WORKER_PREFIX = "corefm.data.errors.DataError: "


class DataError(CorefmError, ValueError):
    """Bad input data or data config; `str(err)` is a one-line message meant for the user.

    A CorefmError, so the CLI prints it as one line; a ValueError, since it is bad input.
    """


class SkipSample(Exception):
    """Raised by a `map_fn` to drop the current sample; the stream counts it and goes on."""


def one_line(err: BaseException) -> str:
    """The user-facing one-line message of `err`, also when it crossed a DataLoader worker.

    PyTorch's DataLoader re-raises a worker exception as the same type, but with the message
    replaced by "Caught DataError in DataLoader worker process N.\\nOriginal Traceback ...".
    The original message is the traceback's last line, after the qualified class name.
    """
    text = str(err)
    if "Original Traceback" not in text:
        return " ".join(text.split("\n")).strip()
    for line in reversed(text.strip().splitlines()):
        if line.startswith(_WORKER_PREFIX):
            return line[len(_WORKER_PREFIX):].strip()
    return text.strip().splitlines()[-1].strip()
