"""`corefm catlip labels`: caption synsets into shards, the vocabulary into the manifest, and the
multi-label targets read back by the task exactly as written."""

from __future__ import annotations

import json

import pytest
import torch

from corefm.data import DataError, load_manifest
from corefm.data.shards import iter_shard
from projects.catlip.labels import caption_synsets, multi_hot
from projects.catlip.shards import LABEL_KEY, build, read_vocabulary
from projects.catlip.task import CatlipTaskConfig, SampleTransform
from tests.catlip.conftest import TRAIN_CAPTIONS, VAL_CAPTIONS
from tests.catlip.test_labels import BOWL, CAT, DOG, ICE_CREAM
from tests.conftest import require_wordnet
from tests.e2e.util import corefm_cmd, run

TABLE = "n08266235"  # "table": WordNet's first sense, the array of data


@pytest.fixture(autouse=True)
def _wordnet():
    require_wordnet()


def _samples(shard_set):
    m = load_manifest(shard_set)
    return [s for sh in m.shards for s in iter_shard(f"{m.dir}/{sh.name}", sh.samples)]


def test_vocabulary_in_manifest_and_targets_in_shards(captions_it, tmp_path):
    out = tmp_path / "cl"
    report = build(captions_it, out, min_count=2)
    vocab = read_vocabulary(out / "train")
    # named by 2+ train captions: dog (3), ice cream (3), cat (3), table (2), bowl (2); beach only twice
    # too ("beach" in two captions); the rest once
    assert set(vocab.synsets) >= {DOG, ICE_CREAM, CAT, BOWL, TABLE}
    assert vocab.synsets == sorted(vocab.synsets) and vocab.min_count == 2 and vocab.captions == 10
    counts = dict(zip(vocab.synsets, vocab.counts))
    assert counts[DOG] == 3 and counts[ICE_CREAM] == 3 and counts[CAT] == 3
    assert vocab.lemmas[vocab.synsets.index(ICE_CREAM)] == "ice_cream"
    assert read_vocabulary(out / "val").synsets == vocab.synsets  # val labelled with train's vocabulary
    assert report["train"] == {"samples_in": 11, "samples_out": 9, "unlabelled": 1, "rejected": 1}
    rejects = [json.loads(x) for x in (out / "train" / "rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"shard": "bad-000000.tar", "key": "nocaption", "reason": "no caption"}]
    index = vocab.index()
    samples = {s["__key__"]: s for s in _samples(out / "train")}
    for i, text in enumerate(TRAIN_CAPTIONS[:9]):
        stored = json.loads(samples[f"train{i:03d}"][LABEL_KEY])
        assert stored["synsets"] == caption_synsets(text)
        assert stored["labels"] == sorted(index[s] for s in stored["synsets"] if s in index)
        assert samples[f"train{i:03d}"]["txt"].decode() == text  # the input members are kept as they were
    # what the task's workers make of a stored sample is the caption's multi-hot target, bit for bit
    fn = SampleTransform(CatlipTaskConfig(), image_size=16, num_classes=len(vocab), train=True)
    for i, text in enumerate(VAL_CAPTIONS):
        (raw,) = [s for s in _samples(out / "val") if s["__key__"] == f"val{i:03d}"]
        got = fn(raw)
        assert got["image"].shape == (3, 16, 16)
        want = torch.from_numpy(multi_hot(caption_synsets(text), vocab.synsets)).float()
        assert torch.equal(got["target"], want) and want.sum() >= 1


def test_existing_vocabulary_and_bad_inputs(captions_it, tmp_path):
    build(captions_it, tmp_path / "a", min_count=2)
    report = build(captions_it, tmp_path / "b", min_count=99, vocabulary=str(tmp_path / "a" / "train"))
    assert read_vocabulary(tmp_path / "b" / "train") == read_vocabulary(tmp_path / "a" / "train")
    assert report["min_count"] == 2
    with pytest.raises(DataError, match="lower --min-count"):
        build(captions_it, tmp_path / "c", min_count=50)
    with pytest.raises(DataError, match="not a CatLIP shard set"):
        read_vocabulary(captions_it / "train")
    with pytest.raises(DataError, match="no train/ or val/"):
        build(tmp_path / "nothing", tmp_path / "d", min_count=2)
    r = run(corefm_cmd("catlip", "labels", "--in", str(captions_it), "--out", str(tmp_path / "e"), "--min-count", "0"))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == "corefm: error: --min-count must be >= 1, got 0"
