"""Decoding by extension; pickle formats are refused, bad values skip the sample."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from corefm.data import DataError, SkipSample, decode_sample


def _png(mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (4, 3)).save(buf, format="PNG")
    return buf.getvalue()


def test_decodes_by_last_suffix():
    jpg = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(jpg, format="JPEG")
    raw = {
        "__key__": "k", "__url__": "u", "txt": b"hello", "cls": b"7", "json": b'{"a": [1]}',
        "npy": _npy(np.eye(2)), "jpg": jpg.getvalue(), "seg.png": _png("L"), "wav": b"RIFF",
    }
    out = decode_sample(raw)
    assert out["__key__"] == "k" and out["txt"] == "hello" and out["cls"] == 7 and out["json"] == {"a": [1]}
    assert np.array_equal(out["npy"], np.eye(2))
    assert out["jpg"].size == (8, 8) and out["jpg"].mode == "RGB"
    assert out["seg.png"].mode == "L"  # labels keep their mode
    assert out["wav"] == b"RIFF"
    assert decode_sample(raw, {"jpg"}, images="raw")["jpg"] == raw["jpg"]
    assert set(decode_sample(raw, {"txt"})) == {"__key__", "__url__", "txt"}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize("ext", ["pyd", "pickle", "pkl", "pth", "pt", "state.pt"])
def test_pickle_keys_are_refused(ext):
    with pytest.raises(DataError, match="refusing to decode"):
        decode_sample({"__key__": "k", ext: pickle.dumps({"x": 1})})


def test_bad_values_skip_the_sample():
    with pytest.raises(SkipSample, match="jpg"):
        decode_sample({"__key__": "k", "jpg": b"not an image"})
    with pytest.raises(SkipSample, match="no .txt"):
        decode_sample({"__key__": "k", "jpg": b""}, {"txt"})
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SkipSample):  # object arrays would need unpickling
        decode_sample({"__key__": "k", "npy": buf.getvalue()})
