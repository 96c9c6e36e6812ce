"""Benchmark charts: every results JSON with a peer gets its ratio chart, redrawn without rerunning anything."""

from __future__ import annotations

import json
import shutil

from benchmarks._chart import CHARTS, kind_of
from corefm.viz.charts import FASTER, SLOWER, chart_pixels
from tests.e2e.util import ROOT
from tests.viz.conftest import pixels_near, png

RESULTS = ROOT / "benchmarks" / "results"


def test_charts_py_redraws_every_result(tmp_path, capsys):
    from benchmarks.charts import main

    for f in RESULTS.glob("*.json"):
        shutil.copy(f, tmp_path / f.name)
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    drawn = sorted(p.stem for p in tmp_path.glob("*.png"))
    expected = sorted(f.stem for f in RESULTS.glob("*.json") if kind_of(f))
    assert drawn == expected and len(drawn) >= 9
    assert "no chart for: gpu_run1_train.json" in printed  # training checks compare against no peer
    for stem in drawn:
        result = json.loads((tmp_path / f"{stem}.json").read_text())
        title, sections, note = CHARTS[kind_of(tmp_path / f"{stem}.json")](result)
        assert all(s.bars and s.peer for s in sections) and all(r > 0 for s in sections for _, r in s.bars)
        size, colours, rgb = png(tmp_path / f"{stem}.png")
        assert size == chart_pixels(sections, bool(note)), stem
        assert colours > 50, stem
        # a bar in the colour of its side of the peer
        faster = any(r >= 1 for s in sections for _, r in s.bars)
        slower = any(r < 1 for s in sections for _, r in s.bars)
        assert (pixels_near(rgb, FASTER, 4) > 500) == faster and (pixels_near(rgb, SLOWER, 4) > 500) == slower, stem


def test_ratios_are_ours_over_the_peers():
    result = json.loads((RESULTS / "clip_speed_vit_b_32.json").read_text())
    _, sections, _ = CHARTS["clip_speed"](result)
    fp32 = dict(sections[0].bars)
    best = result["results"]["fp32"]["best_samples_per_s"]
    assert fp32["corefm: samples/s"] == best["corefm"] / best["open_clip"]
    assert abs(fp32["corefm: samples/s"] - result["results"]["fp32"]["ratio_vs_open_clip"]) < 1e-9
    _, sections, _ = CHARTS["byteformer_speed"](json.loads((RESULTS / "byteformer_speed.json").read_text()))
    assert sections[0].peer == "pixel ViT" and all(r < 1 for _, r in sections[0].bars)  # the JSON's own verdict


def test_committed_charts_exist_beside_their_json():
    for f in RESULTS.glob("*.json"):
        if kind_of(f):
            assert f.with_suffix(".png").is_file(), f"run python benchmarks/charts.py ({f.name} has no chart)"
