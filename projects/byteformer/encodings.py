"""File encodings: a PIL image or a waveform -> the bytes of a file, as a uint8 array.

They run after augmentation, in the data workers, so the model sees exactly the bytes a file
in that format would hold. All are small picklable objects (DataLoader workers get copies).

Images (``PIL.Image`` in, any mode the format takes):
    fhwc, fchw        raw pixel bytes, channels last / channels first (no header)
    tiff              uncompressed TIFF (what the paper's 77.33% ImageNet result uses)
    png               PNG (deflate at level 0: stored blocks, as the paper)
    jpeg(quality)     baseline JPEG at that quality (paper: q100, q60)
Audio (:class:`Waveform` in):
    wav(dtype)        RIFF WAV, float32 / int16 PCM / uint8 PCM samples
    mp3(compression)  MPEG layer III through libsndfile (the ``soundfile`` wheel bundles it)
Stored files:
    raw               the file bytes exactly as stored in the shard (``tiff``/``png``/``jpg``/``wav``/``mp3``)
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from corefm.errors import ConfigError

IMAGE_KEYS = ("tiff", "tif", "png", "jpg", "jpeg", "webp", "bmp", "ppm")
AUDIO_KEYS = ("wav", "mp3", "flac")
RAW_KEYS = IMAGE_KEYS + AUDIO_KEYS


@dataclass
class Waveform:
    """Mono audio: samples (T,) float32 in [-1, 1] at sample_rate Hz."""

    samples: np.ndarray
    sample_rate: int


def _file_bytes(save: Any) -> np.ndarray:
    buf = io.BytesIO()
    save(buf)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


class FHWC:
    """Pixels as stored in memory, row by row, channels interleaved: H*W*C bytes."""

    modality = "image"

    def __call__(self, image: Image.Image) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8)).reshape(-1)


class FCHW:
    """One plane per channel: all of R, then G, then B (identical to fHWC for grey images)."""

    modality = "image"

    def __call__(self, image: Image.Image) -> np.ndarray:
        pixels = np.asarray(image, dtype=np.uint8)
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)).reshape(-1)


class TIFF:
    """Uncompressed TIFF: a small header, then the fHWC pixels."""

    modality = "image"

    def __call__(self, image: Image.Image) -> np.ndarray:
        return _file_bytes(lambda f: image.save(f, format="TIFF"))


class PNG:
    modality = "image"

    def __call__(self, image: Image.Image) -> np.ndarray:
        # Stored deflate blocks (zlib level 0), as the paper and CoreNet write them (apple/ml-cvnets#100):
        # the file is the filtered rows verbatim; PIL's default level 6 compresses them.
        return _file_bytes(lambda f: image.save(f, format="PNG", compress_level=0))


class JPEG:
    modality = "image"

    def __init__(self, quality: int = 100) -> None:
        if not 1 <= quality <= 100:
            raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
        self.quality = quality

    def __call__(self, image: Image.Image) -> np.ndarray:
        return _file_bytes(lambda f: image.save(f, format="JPEG", quality=self.quality))


_WAV_DTYPES = ("float32", "int16", "uint8")


class WAV:
    """RIFF WAV with 32-bit float, 16-bit signed or 8-bit unsigned samples (44-58 byte header).

    Written with scipy: libsndfile adds a PEAK chunk holding the current time to float WAVs,
    which would make the bytes of one clip differ from run to run.
    """

    modality = "audio"

    def __init__(self, dtype: str = "int16") -> None:
        if dtype not in _WAV_DTYPES:
            raise ConfigError(f"WAV dtype must be one of {', '.join(_WAV_DTYPES)}, got {dtype!r}")
        self.dtype = dtype

    def __call__(self, wave: Waveform) -> np.ndarray:
        from scipy.io import wavfile

        x = np.clip(wave.samples, -1.0, 1.0).astype(np.float32)
        if self.dtype == "int16":
            x = np.round(x * 32767).astype(np.int16)
        elif self.dtype == "uint8":
            x = np.round(x * 127 + 128).astype(np.uint8)
        return _file_bytes(lambda f: wavfile.write(f, wave.sample_rate, x))


class MP3:
    """MPEG layer III at a constant bitrate set by libsndfile's compression level (0 = highest bitrate)."""

    modality = "audio"

    def __init__(self, compression: float = 0.5) -> None:
        if not 0.0 <= compression < 1.0:  # libsndfile refuses 1.0
            raise ConfigError(f"MP3 compression must be in [0, 1), got {compression}")
        self.compression = compression

    def __call__(self, wave: Waveform) -> np.ndarray:
        import soundfile as sf

        samples = np.clip(wave.samples, -1.0, 1.0).astype(np.float32)
        return _file_bytes(lambda f: sf.write(f, samples, wave.sample_rate, format="MP3",
                                              compression_level=self.compression, bitrate_mode="CONSTANT"))


class Raw:
    """The stored file's bytes, untouched (no decoding, so no augmentation either)."""

    modality = "raw"

    def __call__(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8)


ENCODINGS = {"fhwc": FHWC, "fchw": FCHW, "tiff": TIFF, "png": PNG, "jpeg": JPEG, "wav": WAV, "mp3": MP3,
             "raw": Raw}


def build_encoding(name: str, **kwargs: Any) -> Any:
    """An encoding by name with its keyword arguments, e.g. ``build_encoding("jpeg", quality=60)``."""
    if name not in ENCODINGS:
        raise ConfigError(f"unknown byte encoding {name!r} (known: {', '.join(ENCODINGS)})")
    try:
        return ENCODINGS[name](**kwargs)
    except TypeError as e:
        raise ConfigError(f"encoding {name!r}: {e}") from None


def sniff(data: bytes) -> str | None:
    """The shard key a file's bytes belong under, from its magic number (None if unknown)."""
    head = data[:12]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head[:2] in (b"P5", b"P6"):
        return "ppm"
    return None
