"""Speech Commands v2 shards from the archive's layout: 12 classes, the archive's splits, the files' own
bytes, silence crops that share no audio between splits. The layout is built here (the archive is
2.3 GB and not on this machine); its clips are 16 kHz WAV files as the archive's."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from corefm.data import DataError
from corefm.data.shards import iter_shard
from projects.byteformer.speech_commands import CLASSES, build


def _wav(seconds: float, seed: int) -> bytes:
    x = (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 3000).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "speech_commands_v0.02"
    files = {}
    for w, word in enumerate(["yes", "go", "cat", "marvin"]):
        for s in range(5):
            rel = f"{word}/{s:08x}_nohash_0.wav"
            (root / word).mkdir(parents=True, exist_ok=True)
            files[rel] = _wav(0.7 + 0.05 * s, 10 * w + s)
            (root / rel).write_bytes(files[rel])
    (root / "validation_list.txt").write_text("yes/00000001_nohash_0.wav\ncat/00000001_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("go/00000002_nohash_0.wav\nmarvin/00000002_nohash_0.wav\n")
    (root / "_background_noise_").mkdir()
    (root / "_background_noise_" / "white_noise.wav").write_bytes(_wav(20.0, 99))
    return root, files


def _samples(path):
    return [s for shard in sorted(path.glob("*.tar")) for s in iter_shard(str(shard))]


def test_twelve_classes_the_archives_splits_and_its_own_bytes(archive, tmp_path):
    root, files = archive
    out = build(root, tmp_path / "out", {"train": 2, "val": 1, "test": 1})
    by_split = {split: _samples(path) for split, path in out.items()}
    manifest = json.loads((out["train"] / "dataset.json").read_text())
    assert manifest["producer"]["classes"] == CLASSES and len(CLASSES) == 12
    words = {split: Counter(s["txt"].decode() for s in samples) for split, samples in by_split.items()}
    assert words["val"] == {"yes": 1, "cat": 1, "silence": 2} and words["test"] == {"go": 1, "marvin": 1, "silence": 2}
    assert words["train"] == {"yes": 4, "go": 4, "cat": 4, "marvin": 4, "silence": 16}
    for samples in by_split.values():
        for s in samples:
            meta, cls = json.loads(s["json"]), int(s["cls"])
            if meta["word"] == "silence":
                assert cls == CLASSES.index("silence") and sf.info(io.BytesIO(s["wav"])).frames == 16000
            else:
                assert s["wav"] == files[meta["path"]]  # the archive's file, byte for byte
                assert CLASSES[cls] == (meta["word"] if meta["word"] in CLASSES else "unknown")
    # silence crops: disjoint stretches of the recording, in split order
    offsets = {split: sorted(json.loads(s["json"])["offset"] for s in samples if s["txt"] == b"silence")
               for split, samples in by_split.items()}
    assert max(offsets["train"]) + 16000 <= min(offsets["val"]) and max(offsets["val"]) + 16000 <= min(offsets["test"])


def test_a_folder_that_is_not_the_archive_is_one_error(tmp_path):
    with pytest.raises(DataError, match="validation_list.txt not found"):
        build(tmp_path, tmp_path / "out")
