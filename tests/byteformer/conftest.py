"""Shared helpers: a tiny ByteFormer config (the per-test RNG seed is in tests/conftest.py)."""

from __future__ import annotations


def tiny_model_args(**extra) -> dict:
    """A ByteFormer small enough for a unit test that still has shifts, merges and several windows."""
    args = dict(dim=32, heads=2, ffn_dim=64, layers=4, window_size=8, merge_after=[0, 1], kernel_size=4,
                max_bytes=20000, num_classes=10)
    args.update(extra)
    return args
