"""End to end through the `corefm` command: data tools, 2-rank training, release loaded by open_clip, eval."""

from __future__ import annotations

import json

import pytest
import torch

from tests.e2e.util import ROOT, corefm_cmd, final, losses, run

pytestmark = pytest.mark.slow

RECIPE = ROOT / "projects/clip_pseudo/configs/fashion_tiny.yaml"


def _train(data, run_dir, *extra: str, nproc: int = 2):
    sets = {"run_dir": run_dir, "data.train": data / "train", "data.val": data / "val", "train.max_steps": 12,
            "train.micro_batch_size": 16, "log.every": 4, "log.progress": False, "eval.every": 0,
            "eval.max_batches": 2, "checkpoint.every": 0, "schedule.warmup_steps": 2, "data.shuffle_buffer": 100}
    args = sum((["--set", f"{k}={v}"] for k, v in sets.items()), [])
    return run(corefm_cmd("train", str(RECIPE), "--nproc", str(nproc), *args, *sum((["--set", e] for e in extra), [])))


def test_train_release_load_in_open_clip_and_eval(fashion_pl, tmp_path):
    import open_clip
    run_dir = tmp_path / "r"
    r = _train(fashion_pl, run_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = losses(run_dir)
    assert set(steps) >= {4, 8, 12} and all(v == v for v in steps.values())
    result = final(run_dir)["eval"]
    assert {"zero_shot_top1", "seg_miou", "edges_f1", "clip_loss"} <= set(result)
    rel = tmp_path / "release"
    r = run(corefm_cmd("release", str(run_dir), "--out", str(rel)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "open_clip_model.safetensors" in r.stdout and "library_name: open_clip" in (rel / "README.md").read_text()
    # open_clip alone loads the release and computes what our trained model computes
    theirs, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(rel))
    tokenizer = open_clip.get_tokenizer("local-dir:" + str(rel))
    from corefm.train.evaluate import load_run

    _, task = load_run(run_dir)
    images, text = torch.randn(2, 3, 28, 28), tokenizer(["a photo of a bag.", "a sneaker"])
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval().encode_image(images), task.model.eval().encode_image(images),
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(theirs.encode_text(text), task.model.encode_text(text), atol=1e-5, rtol=1e-4)
    ev = run(corefm_cmd("clip", "eval", str(rel), "--data", str(fashion_pl / "val"), "--probe", "seg,semantic",
                        "--probe-train", str(fashion_pl / "train"), "--probe-samples", "96", "--probe-epochs", "2",
                        "--max-samples", "96", "--classes", "t-shirt,trouser,pullover,dress,coat,sandal,shirt,"
                        "sneaker,bag,ankle boot", "--json", str(tmp_path / "m.json")))
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["samples"] == 96 and {"image_to_text_R@1", "text_to_image_R@10", "zero_shot_top1",
                                         "probe_seg_miou", "probe_semantic_miou"} <= set(metrics)


def test_plain_clip_switch_and_data_cli(fashion_it, tmp_path):
    """task.heads=[] trains plain CLIP on shards without any pseudo-label; the data tools' CLI."""
    run_dir = tmp_path / "plain"
    r = _train(fashion_it, run_dir, "task.heads=[]", nproc=1)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "loss_seg" not in (run_dir / "metrics.jsonl").read_text()
    bad = run(corefm_cmd("clip", "pseudo-label", "--in", str(fashion_it / "val"), "--out", str(tmp_path / "x"),
                         "--experts", "otsu-seg,sobel"))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("corefm: error: unknown expert")
    ok = run(corefm_cmd("clip", "pseudo-label", "--in", str(fashion_it / "val"), "--out", str(tmp_path / "pl"),
                        "--experts", "otsu-seg", "--workers", "1"))
    assert ok.returncode == 0 and "384 of 384 samples labelled" in ok.stdout, ok.stderr[-2000:]


def test_grad_accum_keeps_the_contrastive_batch(fashion_pl, tmp_path):
    """2 ranks x 2 micro-batches of 8 train as 2 ranks x 1 batch of 16: the contrastive loss sees all
    32 samples of the step either way (gradient caching), so the losses agree step for step."""
    common = ["train.max_steps=4", "log.every=1", "data.num_workers=1", "eval.max_batches=1"]
    runs = {}
    for name, micro, accum in (("big", 16, 1), ("accum", 8, 2)):
        r = _train(fashion_pl, tmp_path / name, *common, f"train.micro_batch_size={micro}",
                   f"train.grad_accum={accum}")
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = losses(tmp_path / name)
    assert set(runs["big"]) == {1, 2, 3, 4}
    for step, loss in runs["big"].items():
        assert abs(runs["accum"][step] - loss) < 1e-4 * abs(loss), (step, runs)
