"""Release folders load back for prediction; every unusable file costs one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from corefm.hub.release import release
from corefm.train.build import build_task
from corefm.train.config import parse_recipe, recipe_to_dict
from corefm.train.export import save_safetensors_atomic
from projects.byteformer.predict import PredictError, Predictor, class_names
from tests.byteformer._data import png_bytes, wav_bytes
from tests.byteformer.conftest import tiny_model_args

MAX_BYTES = 600


def fake_run(tmp: Path, image_encoding: str = "raw", **task_cfg) -> Path:
    """A finished run folder (recipe.json, final.json, model.safetensors) of an untrained model."""
    raw = {"model": {"name": "byteformer", **tiny_model_args(max_bytes=MAX_BYTES, num_classes=4)},
           "task": {"name": "byte_classification", "image_encoding": image_encoding, "audio_encoding": "raw",
                    "class_names": ["cat", "dog", "yes", "no"], **task_cfg},
           "run_dir": str(tmp / "run")}
    recipe = parse_recipe(raw)
    task = build_task(recipe)
    run = tmp / "run"
    run.mkdir()
    (run / "recipe.json").write_text(json.dumps(recipe_to_dict(recipe)))
    (run / "final.json").write_text(json.dumps({"step": 0, "loss": 1.0, "eval": {"accuracy": 0.25}}))
    save_safetensors_atomic(task.export_state_dict(task.state_dict()), run / "model.safetensors")
    return run


@pytest.fixture()
def released(tmp_path) -> Path:
    out = tmp_path / "release"
    files = release(fake_run(tmp_path), out)
    assert {f.name for f in files} == {"model.safetensors", "config.json", "recipe.json", "classes.json", "README.md"}
    return out


def test_release_folder_contents(released):
    config = json.loads((released / "config.json").read_text())
    assert config["corefm_model"] == "byteformer" and config["max_bytes"] == MAX_BYTES
    assert json.loads((released / "classes.json").read_text()) == ["cat", "dog", "yes", "no"]
    card = (released / "README.md").read_text()
    assert "corefm byteformer predict" in card and "raw" in card and "600 bytes" in card


def test_release_predicts_like_the_trained_model(released, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.wav"
    a.write_bytes(png_bytes(1))
    b.write_bytes(wav_bytes(0.02))
    p = Predictor(released)
    preds = p.predict([a, b], top=4)
    assert [len(x.top) for x in preds] == [2 * 2] * 2
    assert {name for name, _ in preds[0].top} == {"cat", "dog", "yes", "no"}
    assert abs(sum(prob for _, prob in preds[0].top) - 1) < 1e-5
    # The same model straight from the run folder gives the same probabilities.
    again = Predictor(tmp_path / "run").predict([a, b], top=4)
    assert [x.top for x in again] == [x.top for x in preds]
    with torch.no_grad():
        x = torch.tensor([list(png_bytes(1))])
        direct = p.model(x).softmax(-1)[0]
    assert abs(direct.max().item() - preds[0].top[0][1]) < 1e-5


def test_unknown_file_type_goes_to_a_raw_model(released, tmp_path):
    f = tmp_path / "notes.bin"
    f.write_bytes(b"\x00\x01 some bytes")
    assert Predictor(released).predict([f])[0].top


@pytest.mark.parametrize("case,match", [
    ("empty", r"empty\.png: empty file \(0 bytes\)"),
    ("large", r"large\.png: 700 bytes exceed the model's maximum input of 600 bytes"),
    ("missing", r"missing\.png: cannot read: No such file or directory"),
    ("directory", r"directory: cannot read: Is a directory"),
])
def test_bad_files_are_one_line(released, tmp_path, case, match):
    path = tmp_path / f"{case}.png" if case != "directory" else tmp_path
    if case == "directory":
        path = tmp_path / "directory"
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "large":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(692))
    with pytest.raises(PredictError, match=match) as e:
        Predictor(released).predict([path])
    assert "\n" not in str(e.value)


def test_encoding_model_reencodes_files_and_refuses_unknown_types(tmp_path):
    run = fake_run(tmp_path, image_encoding="tiff", image_size=8, audio_encoding="wav")
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(2, size=64))  # a larger image is resized and re-encoded, not refused
    assert Predictor(run).predict([big])[0].top
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(PredictError, match="not an image or audio file this model can read"):
        Predictor(run).predict([text])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    with pytest.raises(PredictError, match="broken.png: undecodable png image"):
        Predictor(run).predict([broken])


def test_not_a_byteformer_folder(tmp_path):
    from corefm.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no recipe.json"):
        Predictor(tmp_path)


def test_class_names_from_manifests(tmp_path):
    from corefm.data import ShardWriter

    for name, key, classes in (("img", "png", ["a", "b"]), ("aud", "wav", ["zero", "one"])):
        with ShardWriter(tmp_path / name, producer={"name": "t", "classes": classes}) as w:
            w.write({"__key__": "s0", key: b"x", "cls": 0})
    recipe = {"model": {"num_classes": 5}, "task": {"audio_label_offset": 2},
              "data": {"train": f"{tmp_path / 'img'}::{tmp_path / 'aud'}"}}
    assert class_names(recipe) == ["a", "b", "zero", "one", "class_4"]
