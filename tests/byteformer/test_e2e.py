"""ByteFormer through the `corefm` command: data tools, training on bytes, release, predict."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.e2e.util import ROOT, corefm_cmd, final, losses, run, train_cmd

pytestmark = pytest.mark.slow
RECIPE = ROOT / "projects/byteformer/configs/fashion_tiff.yaml"
TINY = {"model.dim": 32, "model.heads": 2, "model.ffn_dim": 64, "model.layers": 2, "model.window_size": 16,
        "model.merge_after": "[0]", "model.kernel_size": 8, "model.max_bytes": 9000, "log.progress": False,
        "log.wandb": False, "data.num_workers": 1, "data.shuffle_buffer": 100, "schedule.warmup_steps": 10}


def sets(**extra) -> list[str]:
    return [f"{k}={v}" for k, v in {**TINY, **extra}.items()]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from corefm.data.image_sets import build

    out = tmp_path_factory.mktemp("digits")
    build("digits", out, train_shards=4, val_shards=2)
    return out


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    from projects.byteformer.speech import ASTERISK_DIGITS
    from tests.conftest import require_installed

    require_installed(shutil.which("espeak-ng") is not None and (ASTERISK_DIGITS / "0.wav").is_file(),
                      "Debian packages espeak-ng and asterisk-core-sounds-en-wav")
    out = tmp_path_factory.mktemp("speech")
    r = run(corefm_cmd("byteformer", "speech-digits", "--out", str(out), "--speakers", "6", "--pitches", "40,60",
                       "--speeds", "170", "--train-shards", "2", "--val-shards", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def speakers(folder: Path) -> set[str]:
    names = set()
    for shard in folder.glob("*.tar"):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    names.add(json.load(tar.extractfile(m))["speaker"])
    return names


def test_speech_digits_shards_are_speaker_disjoint(speech):
    train, val = speakers(speech / "train"), speakers(speech / "val")
    assert "asterisk-en" in train and len(val) == 1 and not train & val
    manifest = json.loads((speech / "val" / "dataset.json").read_text())
    assert manifest["producer"]["classes"][7] == "seven" and "wav" in manifest["keys"]
    assert sum(s["samples"] for s in manifest["shards"]) == 20  # 1 speaker x 10 digits x 2 pitches


def test_train_tiff_bytes_release_and_predict(digits, tmp_path, capsys):
    run_dir = tmp_path / "run"
    overrides = sets(run_dir=run_dir, **{"data.train": digits / "train", "data.val": digits / "val",
                                        "train.max_steps": 120, "train.micro_batch_size": 32, "log.every": 20,
                                        "task.max_shift": 0, "task.hflip": False, "optim.lr": 3e-3})
    r = run(train_cmd(overrides, nproc=1, recipe=RECIPE), timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = losses(run_dir)
    assert steps[120] < steps[20] - 0.3, steps  # it learns from TIFF bytes
    assert final(run_dir)["eval"]["accuracy"] > 0.3  # 10 digits: chance is 0.1

    from corefm.cli import main

    assert main(["release", str(run_dir), "--out", str(tmp_path / "release")]) == 0  # in-process: saves a start-up
    assert "dry run" in capsys.readouterr().out
    assert json.loads((tmp_path / "release" / "classes.json").read_text())[3] == "three"

    from corefm.data.image_sets import digits as load_digits
    from PIL import Image

    (images, labels), _, _ = load_digits()
    files = []
    for i in range(2):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(images[i]).save(path)
        files.append(str(path))
    (tmp_path / "empty.png").write_bytes(b"")
    p = run(corefm_cmd("byteformer", "predict", str(tmp_path / "release"), *files, str(tmp_path / "empty.png"),
                       str(tmp_path / "missing.wav"), "--top", "2"))
    assert p.returncode == 2, p.stderr[-3000:]
    out = p.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in out] == files and all(line.count("(") == 2 for line in out)
    errors = [line for line in p.stderr.splitlines() if line.startswith("corefm: error:")]
    assert len(errors) == 2 and "Traceback" not in p.stderr
    assert "empty file" in errors[0] and "missing.wav: cannot read" in errors[1]


def test_joint_image_and_audio_training(digits, speech, tmp_path):
    run_dir = tmp_path / "joint"
    recipe = ROOT / "projects/byteformer/configs/joint.yaml"
    overrides = sets(run_dir=run_dir, **{"data.train": f"{digits / 'train'}::{speech / 'train'}",
                                        "data.val": f"{digits / 'val'}::{speech / 'val'}", "train.max_steps": 12,
                                        "train.micro_batch_size": 8, "log.every": 6, "task.audio_seconds": 0.5})
    r = run(train_cmd(overrides, nproc=2, recipe=recipe), timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    result = final(run_dir)
    assert result["eval"]["samples"] == 299 + 20  # every held-out image and clip once
    assert {"accuracy_image", "accuracy_audio"} <= set(result["eval"])
    assert all(v == v for v in losses(run_dir).values())  # finite


def test_raw_bytes_from_shards_and_too_long_samples_are_skipped(digits, tmp_path):
    run_dir = tmp_path / "raw"
    overrides = sets(run_dir=run_dir, **{"data.train": digits / "train", "data.val": digits / "val",
                                        "task.image_encoding": "raw", "train.max_steps": 6, "log.every": 3,
                                        "task.max_bytes": 122, "model.max_bytes": 9000,
                                        "train.micro_batch_size": 8,
                                        # most digits' PNGs are longer: allow skipping them all but a few
                                        "data.max_skip_fraction": 1.0})
    r = run(train_cmd(overrides, nproc=1, recipe=RECIPE), timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exceed max_bytes (122)" in r.stderr  # the skip is logged with its reason
    assert final(run_dir)["step"] == 6
