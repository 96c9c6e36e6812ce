"""Keep library start-up chatter out of the user's output (errors still surface)."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    """Call before importing DeepSpeed: it probes for accelerators and logs each probe."""
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        os.environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.is_available() else "cpu"
    for name in ("DeepSpeed", "deepspeed", "torch.utils.cpp_extension", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # DeepSpeed 0.19 calls deprecated collectives; the warning says nothing a user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
