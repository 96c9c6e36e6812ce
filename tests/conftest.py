"""Fixtures every test folder shares."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    # Every test starts from the same RNG state, whatever ran before it.
    torch.manual_seed(1234)
    np.random.seed(1234)
    yield


def require_installed(ok: bool, what: str) -> None:
    """Skip the calling test when something launch/setup.sh installs is missing; under CI=true fail
    instead, since CI runs setup.sh first and a missing piece there is an install bug."""
    if ok:
        return
    message = f"needs {what} (launch/setup.sh installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI=true, so this is an install bug, not a skip")
    pytest.skip(message)


def require_fashion_mnist() -> None:
    """Skip (fail under CI) when Debian's Fashion-MNIST package is not installed."""
    from corefm.data.image_sets import FASHION_ROOT

    require_installed((FASHION_ROOT / "train-images-idx3-ubyte.gz").is_file(), "Debian's dataset-fashion-mnist")


def require_wordnet() -> None:
    """Skip (fail under CI) when Debian's wordnet-base (WordNet 3.0 dict files) is not installed."""
    from projects.catlip.wordnet import default_wordnet

    require_installed(default_wordnet().available(), "Debian's wordnet-base")
