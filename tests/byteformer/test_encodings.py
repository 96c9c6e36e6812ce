"""Encodings give real, decodable files; byte transforms are exact and deterministic where fixed."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from corefm.errors import ConfigError
from projects.byteformer.byte_transforms import KeepMask, Permute, Shuffle, WindowShuffle, build_transform
from projects.byteformer.encodings import FCHW, FHWC, JPEG, MP3, PNG, TIFF, WAV, Raw, Waveform, build_encoding, sniff


def image(mode: str = "RGB", size: int = 20) -> Image.Image:
    """A smooth photo-like pattern (gradients, a bright square) with a little noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size + 3]
    rgb = np.stack([x * 9, y * 11, (x + y) * 5], axis=-1) % 256 + rng.integers(0, 8, (size, size + 3, 3))
    rgb[size // 4: size // 2, size // 4: size // 2] = 230
    img = Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")
    return img if mode == "RGB" else img.convert(mode)


def wave(seconds: float = 0.5, rate: int = 8000) -> Waveform:
    t = np.arange(int(seconds * rate)) / rate
    return Waveform((0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)


def test_fhwc_and_fchw_are_the_pixel_bytes():
    img = image()
    pixels = np.asarray(img)
    assert np.array_equal(FHWC()(img), pixels.reshape(-1))
    assert np.array_equal(FCHW()(img), pixels.transpose(2, 0, 1).reshape(-1))
    grey = image("L")
    assert np.array_equal(FCHW()(grey), FHWC()(grey))


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("enc,kind,lossless", [(TIFF(), "tiff", True), (PNG(), "png", True),
                                               (JPEG(100), "jpg", False), (JPEG(60), "jpg", False)])
def test_image_files_decode_back(mode, enc, kind, lossless):
    img = image(mode)
    data = enc(img)
    assert data.dtype == np.uint8 and sniff(bytes(data)) == kind
    back = Image.open(io.BytesIO(bytes(data)))
    assert back.size == img.size and back.mode == mode
    diff = np.abs(np.asarray(back, dtype=int) - np.asarray(img, dtype=int))
    assert diff.max() == 0 if lossless else diff.mean() < 12
    assert np.array_equal(enc(img), data)  # deterministic


def test_tiff_holds_the_raw_pixels():
    img = image("L")
    data = bytes(TIFF()(img))
    assert bytes(FHWC()(img)) in data  # uncompressed: the fHWC bytes appear verbatim


def test_png_is_written_at_zlib_level_0_as_the_paper():
    """Stored deflate blocks (apple/ml-cvnets#100): the image data is the filtered rows, uncompressed."""
    import zlib

    img = image("L")
    data = bytes(PNG()(img))
    at = data.index(b"IDAT")
    idat = data[at + 4: at + 4 + int.from_bytes(data[at - 4: at], "big")]
    rows = zlib.decompress(idat)
    h, w = np.asarray(img).shape
    assert len(rows) == h * (w + 1)  # a filter byte per row, then the row
    assert idat[2] & 0b110 == 0 and len(idat) >= len(rows)  # deflate block type 00 (stored): no compression
    assert Image.open(io.BytesIO(data)).tobytes() == img.tobytes()


def test_jpeg_quality_changes_size():
    img = image("RGB", 64)
    assert len(JPEG(60)(img)) < len(JPEG(100)(img))
    with pytest.raises(ConfigError):
        JPEG(0)


@pytest.mark.parametrize("dtype,per_sample,tol", [("float32", 4, 1e-7), ("int16", 2, 1e-4), ("uint8", 1, 1e-2)])
def test_wav_round_trip(dtype, per_sample, tol):
    w = wave()
    data = WAV(dtype)(w)
    assert sniff(bytes(data)) == "wav"
    assert len(data) - per_sample * len(w.samples) < 60  # a small header, then the samples
    back, rate = sf.read(io.BytesIO(bytes(data)), dtype="float32")
    assert rate == 8000 and np.abs(back - w.samples).max() < tol
    assert np.array_equal(WAV(dtype)(w), data)


def test_mp3_encodes_and_decodes():
    w = wave(1.0)
    data = MP3()(w)
    assert sniff(bytes(data)) == "mp3"
    assert len(data) < len(WAV("int16")(w))  # compressed
    back, rate = sf.read(io.BytesIO(bytes(data)), dtype="float32")
    assert rate == 8000 and abs(len(back) - len(w.samples)) < 2000
    assert np.sqrt(np.mean(back ** 2)) > 0.1  # the tone survives


def test_raw_is_the_stored_file():
    data = bytes(PNG()(image()))
    assert bytes(Raw()(data)) == data


def test_unknown_encoding_is_one_line():
    with pytest.raises(ConfigError, match="unknown byte encoding 'gif'"):
        build_encoding("gif")


def test_permutation_is_a_fixed_bijection():
    data = np.arange(256, dtype=np.uint8)
    a, b = Permute(seed=3), Permute(seed=3)
    assert np.array_equal(a(data), b(data)) and sorted(a(data)) == list(range(256))
    assert not np.array_equal(a(data), Permute(seed=4)(data))
    assert np.array_equal(pickle.loads(pickle.dumps(a))(data), a(data))
    inverse = np.argsort(a.table)
    assert np.array_equal(inverse[a(data)], data)


def test_noise_is_uniform_mod_256():
    data = np.full(20000, 254, dtype=np.uint8)
    out = build_transform({"name": "noise", "magnitude": 3})(data).astype(int)
    shifted = (out - 254 + 128) % 256 - 128
    assert set(np.unique(shifted)) == {-3, -2, -1, 0, 1, 2, 3}
    assert (out < 10).any()  # wrapped past 255


def test_orderings():
    data = np.arange(10, dtype=np.uint8)
    assert build_transform({"name": "reverse"})(data).tolist() == list(range(9, -1, -1))
    assert build_transform({"name": "stride", "stride": 3})(data).tolist() == [0, 3, 6, 9, 1, 4, 7, 2, 5, 8]
    ws = WindowShuffle(window=4, seed=1)(data).tolist()
    assert sorted(ws) == list(range(10)) and ws == WindowShuffle(window=4, seed=1)(data).tolist()
    pieces = [[ws[0]]]
    for prev, v in zip(ws, ws[1:]):
        if v == prev + 1 and v % 4:
            pieces[-1].append(v)
        else:
            pieces.append([v])
    assert sorted(map(tuple, pieces)) == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]  # windows moved whole
    s = Shuffle(seed=5)
    assert s(data).tolist() == Shuffle(seed=5)(data).tolist() and sorted(s(data)) == list(range(10))
    np.random.seed(0)
    first = Shuffle()(data)
    np.random.seed(0)
    assert np.array_equal(Shuffle()(data), first)  # unseeded: follows the loader's per-batch seed


def test_keep_mask_is_fixed_per_seed_and_keeps_whole_pixels():
    rgb = FHWC()(image("RGB", 16))
    a, b = KeepMask(fraction=0.25, seed=7, group=3), KeepMask(fraction=0.25, seed=7, group=3)
    assert np.array_equal(a(rgb), b(rgb))
    assert len(a(rgb)) == round(0.25 * len(rgb) // 3) * 3
    mask = a.mask(len(rgb)).reshape(-1, 3)
    assert (mask.all(1) | ~mask.any(1)).all()  # a pixel is kept or dropped whole
    assert not np.array_equal(KeepMask(fraction=0.25, seed=8, group=3).mask(len(rgb)), a.mask(len(rgb)))
    assert np.array_equal(pickle.loads(pickle.dumps(a))(rgb), a(rgb))


def test_bad_transform_specs_are_one_line():
    with pytest.raises(ConfigError, match="unknown byte transform 'rot13'"):
        build_transform({"name": "rot13"})
    with pytest.raises(ConfigError, match="'noise'"):
        build_transform({"name": "noise", "amount": 3})
