"""The pseudo-label tool: provenance, failures reported and skipped, resume, parallel == serial."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from corefm.data import DataError, ShardWriter, load_manifest
from corefm.data.shards import iter_shard
from projects.clip_pseudo.data.pseudo_label import run

FLAKY = "import:tests.clip_pseudo.experts_fixture.Flaky"


def _samples(split_dir) -> list[dict]:
    manifest = load_manifest(split_dir)
    return [s for shard in manifest.shards for s in iter_shard(str(split_dir / shard.name))]


def test_labels_provenance_and_failing_expert(fashion_it, tmp_path):
    out = tmp_path / "pl"
    report = run(fashion_it / "train", out, f"otsu-seg,canny,{FLAKY}", workers=1)
    samples = _samples(out)
    assert report["samples_out"] == len(samples) == 384 and report["rejected"] == 0
    failed = [s for s in samples if "depth.png" not in s]
    assert report["expert_errors"] == {"flaky": len(failed)} and 0 < len(failed) < 384
    assert "flaky expert fails" in report["first_errors"]["flaky"]
    for s in samples:
        meta = json.loads(s["json"])
        prov = meta["pseudo_labels"]
        assert prov["otsu-seg"] == {"key": "seg.png", "version": "1"}
        assert prov["canny"]["version"].startswith("opencv-") and meta["class"]  # input metadata kept
        # a failing expert leaves an error entry and no key; the sample keeps its other labels
        assert ("error" in prov["flaky"]) == ("depth.png" not in s)
        assert {"png", "txt", "cls", "seg.png", "edges.png"} <= set(s)
        seg = np.asarray(Image.open(io.BytesIO(s["seg.png"])))
        assert seg.shape == (28, 28) and set(np.unique(seg)) <= {0, 1}
    manifest = load_manifest(out)
    assert {"seg.png", "edges.png", "depth.png"} <= set(manifest.keys)
    assert manifest.producer["experts"][0][0] == "otsu-seg" and manifest.producer["classes"][0] == "t-shirt"
    assert manifest.splits == {"train": [s.name for s in manifest.shards]}


def test_parallel_output_is_byte_identical_to_serial(fashion_it, tmp_path):
    run(fashion_it / "val", tmp_path / "serial", "otsu-seg,canny", workers=1)
    run(fashion_it / "val", tmp_path / "parallel", "otsu-seg,canny", workers=2)
    a, b = load_manifest(tmp_path / "serial"), load_manifest(tmp_path / "parallel")
    assert [(s.name, s.sha256) for s in a.shards] == [(s.name, s.sha256) for s in b.shards]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_samples_are_reported_and_skipped(tmp_path):
    img = _png((np.arange(28 * 28).reshape(28, 28) % 251).astype(np.uint8))
    samples = [
        {"__key__": "good", "png": img, "txt": "a good one"},
        {"__key__": "badimg", "png": b"\x89PNG\r\n\x1a\n truncated", "txt": "fine caption"},
        {"__key__": "badtxt", "png": img, "txt": b"\xff\xfe broken"},
        {"__key__": "emptytxt", "png": img, "txt": "   "},
        {"__key__": "badjson", "png": img, "txt": "ok", "json": b"{not json"},
        {"__key__": "noimage", "txt": "only text"},
        {"__key__": "good2", "png": img, "txt": "another"},
    ]
    with ShardWriter(tmp_path / "in", prefix="train", max_samples_per_shard=4) as w:
        for s in samples:
            w.write(s)
    report = run(tmp_path / "in", tmp_path / "out", "otsu-seg", workers=1)
    assert report["samples_out"] == 2 and report["rejected"] == 5
    assert report["reject_reasons"] == {"undecodable .png": 1, "bad caption": 2, "bad json metadata": 1,
                                        "no image member": 1}
    rejects = [json.loads(l) for l in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert {r["key"] for r in rejects} == {"badimg", "badtxt", "emptytxt", "badjson", "noimage"}
    assert [s["__key__"] for s in _samples(tmp_path / "out")] == ["good", "good2"]


def test_resume_skips_finished_shards_and_redoes_changed_ones(fashion_it, tmp_path):
    out = tmp_path / "pl"
    first = run(fashion_it / "val", out, "otsu-seg", workers=1)
    assert first["resumed"] == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    again = run(fashion_it / "val", out, "otsu-seg", workers=1)
    assert again["resumed"] == again["shards"] == 8
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == stamps
    (out / "val-000003.tar").unlink()  # a lost output shard is redone, the others are not
    partial = run(fashion_it / "val", out, "otsu-seg", workers=1)
    assert partial["resumed"] == 7 and (out / "val-000003.tar").is_file()
    changed = run(fashion_it / "val", out, "canny:40-120", workers=1)  # other experts: everything again
    assert changed["resumed"] == 0 and "canny" in json.loads(_samples(out)[0]["json"])["pseudo_labels"]


def test_corrupt_input_shard_keeps_earlier_samples(fashion_it, tmp_path):
    data = tmp_path / "in"
    shutil.copytree(fashion_it / "val", data)
    shard = data / "val-000002.tar"
    shard.write_bytes(shard.read_bytes()[: 20 * 512 + 100])  # cut inside a member
    report = run(data, tmp_path / "out", "otsu-seg", workers=1)
    assert "val-000002.tar" in report["bad_shards"]
    kept = [s for s in _samples(tmp_path / "out") if s["__url__"].endswith("val-000002.tar")]
    assert 0 < len(kept) < 48
    # a retry re-reads the damaged shard instead of trusting its record
    assert run(data, tmp_path / "out", "otsu-seg", workers=1)["resumed"] == 7


def test_bad_expert_lists_are_one_line(fashion_it, tmp_path):
    with pytest.raises(DataError, match="unknown expert 'sobel'"):
        run(fashion_it / "val", tmp_path / "x", "otsu-seg,sobel")
    with pytest.raises(DataError, match="both write seg.png"):
        run(fashion_it / "val", tmp_path / "x", "otsu-seg,otsu-seg")
    with pytest.raises(DataError, match="has no config.json: not a transformers model folder"):
        run(fashion_it / "val", tmp_path / "x", "hf-seg:" + str(tmp_path))
    with pytest.raises(DataError, match="canny:LOW-HIGH"):
        run(fashion_it / "val", tmp_path / "x", "canny:fifty")
    with pytest.raises(DataError, match="must differ"):
        run(fashion_it / "val", fashion_it / "val", "otsu-seg")
    with pytest.raises(DataError, match="cannot load the expert class"):
        run(fashion_it / "val", tmp_path / "x", "import:tests.nothing.Here")
