"""CatLIP end to end through `corefm`: image-text shards -> synset labels -> 2-rank training (loss
falls, eval reports the precision beside its chance level) -> transfer to the 10 classes."""

from __future__ import annotations

import json

import pytest

from tests.conftest import require_fashion_mnist, require_wordnet
from tests.e2e.util import ROOT, corefm_cmd, final, losses, run

pytestmark = pytest.mark.slow

RECIPE = ROOT / "projects/catlip/configs/fashion_tiny.yaml"


def test_labels_train_transfer(tmp_path):
    require_fashion_mnist()
    require_wordnet()
    from projects.clip_pseudo.data.image_text import build

    it, cl = tmp_path / "it", tmp_path / "cl"
    build("fashion-mnist", it, samples_per_shard=96, limit=768, workers=2)
    r = run(corefm_cmd("catlip", "labels", "--in", str(it), "--out", str(cl), "--min-count", "5"))
    assert r.returncode == 0, r.stderr[-3000:]
    size = json.loads((cl / "catlip_report.json").read_text())["vocabulary"]
    assert f"model.num_classes={size}" in r.stdout

    run_dir = tmp_path / "run"
    sets = {"run_dir": run_dir, "data.train": cl / "train", "data.val": cl / "val", "model.num_classes": size,
            "train.max_steps": 40, "train.micro_batch_size": 32, "log.every": 10, "log.progress": False,
            "eval.every": 0, "eval.max_batches": 0, "checkpoint.every": 0, "schedule.warmup_steps": 5,
            "data.shuffle_buffer": 200}
    args = sum((["--set", f"{k}={v}"] for k, v in sets.items()), [])
    r = run(corefm_cmd("train", str(RECIPE), "--nproc", "2", *args))
    assert r.returncode == 0, r.stderr[-3000:]
    steps = losses(run_dir)
    assert steps[40] < steps[10]
    result = final(run_dir)["eval"]
    assert result["top1_precision"] > result["prior_top1"] + 0.1  # beats always naming the commonest synset

    r = run(corefm_cmd("catlip", "transfer", str(run_dir), "--train", str(it / "train"), "--data", str(it / "val"),
                       "--probe-samples", "512", "--epochs", "10", "--json", str(tmp_path / "t.json")))
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "t.json").read_text())
    assert metrics["classes_mapped"] == 10  # every Fashion-MNIST class name reaches a vocabulary synset
    assert metrics["transfer_init_top1"] > metrics["chance"] + 0.1  # right before any training on labels

    # catlip eval scores the run as the trainer's eval pass did (here over the whole val set), and a
    # CLIP run on the same image-text shards by zero-shot over the vocabulary's lemmas
    r = run(corefm_cmd("catlip", "eval", str(run_dir), "--data", str(cl / "val"), "--json", str(tmp_path / "e.json")))
    assert r.returncode == 0, r.stderr[-3000:]
    ours = json.loads((tmp_path / "e.json").read_text())
    assert ours["top1_precision"] == pytest.approx(result["top1_precision"], abs=1e-4)
    assert ours["prior_top1"] == pytest.approx(result["prior_top1"], abs=1e-4) and 0 < ours["map"] <= 1
    clip_run = tmp_path / "clip"
    clip_sets = {**sets, "run_dir": clip_run, "data.train": it / "train", "data.val": it / "val", "train.max_steps": 4,
                 "task.heads": "[]"}
    clip_sets.pop("model.num_classes")
    r = run(corefm_cmd("train", str(ROOT / "projects/clip_pseudo/configs/fashion_tiny.yaml"), "--nproc", "1",
                       *sum((["--set", f"{k}={v}"] for k, v in clip_sets.items()), [])))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(corefm_cmd("catlip", "eval", str(clip_run), "--data", str(cl / "val")))
    assert r.returncode == 0, r.stderr[-3000:]
    theirs = json.loads(r.stdout)
    assert theirs["samples"] == ours["samples"] and theirs["prior_top1"] == ours["prior_top1"]

    bad = run(corefm_cmd("train", str(RECIPE), "--nproc", "1", *args, "--set", f"model.num_classes={size + 1}",
                         "--set", f"run_dir={tmp_path / 'bad'}"))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("corefm: error: model.num_classes is")
