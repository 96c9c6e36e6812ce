"""Transforms of an encoded byte string (uint8 array -> uint8 array), applied after the encoding.

Obfuscation (the paper's section on privacy):
    permute(seed)            every byte value v -> perm[v], one fixed permutation of 0..255
    noise(magnitude)         v -> (v + u) mod 256, u ~ U{-magnitude..magnitude}, fresh per byte
Byte-order ablations:
    reverse                  last byte first
    shuffle(seed)            a random permutation of the positions (fixed per length if seeded)
    stride(stride)           bytes 0, s, 2s, ..., then 1, s+1, ...
    window_shuffle(window, seed)  cut into windows of `window` bytes and shuffle their order
Privacy camera:
    keep_mask(fraction, seed, group)  keep only a fixed subset of positions (whole groups of
                             `group` bytes, e.g. 3 for an RGB pixel in fHWC), as a camera that
                             never records the other pixels

"Fixed" means a pure function of (seed, length): every worker process, every epoch and every
later run get the same permutation or mask. Unseeded randomness uses numpy's global RNG, which
corefm's loader seeds per batch, so resumed runs replay it exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from corefm.errors import ConfigError


def _rng(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng([seed, *parts])


class Permute:
    """A fixed bijection of byte values: the data stays learnable, its file format unreadable."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.table = _rng(seed, 256).permutation(256).astype(np.uint8)

    def __call__(self, data: np.ndarray) -> np.ndarray:
        return self.table[data]


class Noise:
    """Uniform noise mod 256 on every byte value."""

    def __init__(self, magnitude: int = 8) -> None:
        if not 0 <= magnitude <= 255:
            raise ConfigError(f"noise magnitude must be in 0..255, got {magnitude}")
        self.magnitude = magnitude

    def __call__(self, data: np.ndarray) -> np.ndarray:
        u = np.random.randint(-self.magnitude, self.magnitude + 1, size=data.shape)
        return ((data.astype(np.int16) + u) % 256).astype(np.uint8)


class Reverse:
    def __call__(self, data: np.ndarray) -> np.ndarray:
        return data[::-1].copy()


class Shuffle:
    """Random order of positions; seeded: one fixed permutation per input length."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def __call__(self, data: np.ndarray) -> np.ndarray:
        n = len(data)
        order = _rng(self.seed, n).permutation(n) if self.seed is not None else np.random.permutation(n)
        return data[order]


class Stride:
    """Interleave by a stride: positions sorted by (i mod s, i)."""

    def __init__(self, stride: int = 4) -> None:
        if stride < 1:
            raise ConfigError(f"stride must be >= 1, got {stride}")
        self.stride = stride

    def __call__(self, data: np.ndarray) -> np.ndarray:
        return np.concatenate([data[i:: self.stride] for i in range(self.stride)])


class WindowShuffle:
    """Shuffle whole windows of `window` bytes (the last may be shorter); order inside kept."""

    def __init__(self, window: int = 64, seed: int | None = None) -> None:
        if window < 1:
            raise ConfigError(f"window must be >= 1, got {window}")
        self.window, self.seed = window, seed

    def __call__(self, data: np.ndarray) -> np.ndarray:
        pieces = [data[i: i + self.window] for i in range(0, len(data), self.window)]
        n = len(pieces)
        order = _rng(self.seed, n).permutation(n) if self.seed is not None else np.random.permutation(n)
        return np.concatenate([pieces[i] for i in order]) if pieces else data


class KeepMask:
    """The privacy camera: a fixed random subset of groups (pixels) is kept, the rest never seen.

    The mask depends only on (seed, number of groups), so every image of one size loses the
    same pixels. Trailing bytes that do not fill a group are kept.
    """

    def __init__(self, fraction: float = 0.1, seed: int = 0, group: int = 1) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"keep_mask fraction must be in (0, 1], got {fraction}")
        if group < 1:
            raise ConfigError(f"keep_mask group must be >= 1, got {group}")
        self.fraction, self.seed, self.group = fraction, seed, group
        self._masks: dict[int, np.ndarray] = {}

    def mask(self, num_bytes: int) -> np.ndarray:
        """(num_bytes,) bool: which byte positions survive."""
        if num_bytes not in self._masks:
            groups = num_bytes // self.group
            keep = np.zeros(groups, dtype=bool)
            keep[_rng(self.seed, groups).permutation(groups)[: max(1, round(self.fraction * groups))]] = True
            tail = np.ones(num_bytes - groups * self.group, dtype=bool)
            self._masks[num_bytes] = np.concatenate([np.repeat(keep, self.group), tail])
        return self._masks[num_bytes]

    def __call__(self, data: np.ndarray) -> np.ndarray:
        return data[self.mask(len(data))]


TRANSFORMS = {"permute": Permute, "noise": Noise, "reverse": Reverse, "shuffle": Shuffle, "stride": Stride,
              "window_shuffle": WindowShuffle, "keep_mask": KeepMask}


def build_transform(spec: dict[str, Any]) -> Any:
    """``{"name": "noise", "magnitude": 8}`` -> the transform; a bad name or argument is one line."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"a byte transform is a mapping with a 'name' (one of {', '.join(TRANSFORMS)}), got {spec!r}")
    args = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] not in TRANSFORMS:
        raise ConfigError(f"unknown byte transform {spec['name']!r} (known: {', '.join(TRANSFORMS)})")
    try:
        return TRANSFORMS[spec["name"]](**args)
    except TypeError as e:
        raise ConfigError(f"byte transform {spec['name']!r}: {e}") from None
