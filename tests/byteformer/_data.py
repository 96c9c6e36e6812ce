"""Small real inputs for ByteFormer tests: PNG images and 8 kHz WAV clips as shard samples."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from projects.byteformer.encodings import WAV, Waveform


def png_bytes(seed: int = 0, size: int = 8, mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds: float = 0.3, freq: float = 440.0, rate: int = 8000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return bytes(WAV("int16")(Waveform((0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)))


def image_sample(i: int = 0, cls: int = 3) -> dict:
    """As corefm's stream yields it: raw bytes under each key, cls as ASCII digits."""
    return {"__key__": f"img-{i}", "png": png_bytes(i), "cls": str(cls).encode()}


def audio_sample(i: int = 0, cls: int = 7) -> dict:
    return {"__key__": f"wav-{i}", "wav": wav_bytes(freq=300 + 50 * i), "cls": str(cls).encode()}
