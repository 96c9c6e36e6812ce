"""Fixtures every test folder shares."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    # Every test starts from the same RNG state, whatever ran before it.
    torch.manual_seed(1234)
    np.random.seed(1234)
    yield


def require_fashion_mnist() -> None:
    """Skip the calling fixture or test when Debian's Fashion-MNIST package is not installed."""
    from data_tools.images import FASHION_ROOT

    if not (FASHION_ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
