"""Errors that reach the user as one line (the CLI prints ``corefm: error: <message>``).

Anything raised as a :class:`CorefmError` is a problem with the user's input (recipe, data,
checkpoint) rather than a bug, so a traceback would only hide the message.
"""


class CorefmError(Exception):
    """Base class: bad input the user can fix; printed as one line."""


class ConfigError(CorefmError, ValueError):
    """A recipe key is unknown, has the wrong type, or an override is malformed."""


class CheckpointError(CorefmError):
    """A checkpoint is missing, incomplete, or does not match the run."""


class TrainingError(CorefmError):
    """Training cannot continue (e.g. a non-finite loss with ``train.on_nonfinite: stop``)."""
