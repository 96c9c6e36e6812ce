"""Recipe loading: every key checked, one-line errors, overrides typed like the YAML."""

from pathlib import Path

import pytest
import yaml

from corefm.errors import ConfigError
from corefm.train.config import apply_overrides, load_recipe, parse_recipe, recipe_to_dict
from corefm.train.schedule import lr_factor
from corefm.train.config import ScheduleConfig

RECIPES = sorted(Path(__file__).resolve().parents[2].glob("projects/*/configs/*.yaml"))


def base() -> dict:
    return {"model": {"name": "vit_classifier", "image_size": 8, "patch_size": 2, "width": 16, "layers": 1,
                      "heads": 2},
            "task": {"name": "classification", "image_size": 8}}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_file_parses(path):
    recipe = load_recipe(path)
    assert recipe.model_name and recipe.task_name


def test_unknown_key_names_key_and_valid_ones():
    raw = base() | {"train": {"max_step": 3}}
    with pytest.raises(ConfigError) as e:
        parse_recipe(raw)
    msg = str(e.value)
    assert "'train.max_step'" in msg and "max_steps" in msg and "\n" not in msg


def test_wrong_type_is_reported_with_key():
    with pytest.raises(ConfigError, match=r"train.max_steps: expected int, got str"):
        parse_recipe(base() | {"train": {"max_steps": "ten"}})
    with pytest.raises(ConfigError, match=r"deepspeed.zero_stage: 4 is not one of"):
        parse_recipe(base() | {"deepspeed": {"zero_stage": 4}})
    with pytest.raises(ConfigError, match=r"model.width: expected int"):
        parse_recipe({**base(), "model": {**base()["model"], "width": 1.5}})


def test_unknown_model_name_lists_known():
    with pytest.raises(ConfigError, match="unknown model 'vit_clasifier'.*vit_classifier"):
        parse_recipe({**base(), "model": {"name": "vit_clasifier"}})


def test_overrides_parse_yaml_values_and_nested_keys():
    raw = apply_overrides(base(), ["train.max_steps=7", "optim.lr=3e-4", "optim.betas=[0.9, 0.95]",
                                   "data.train=a/{0..3}.tar"])
    r = parse_recipe(raw)
    assert r.train.max_steps == 7 and r.optim.lr == 3e-4 and r.optim.betas == (0.9, 0.95)
    assert r.data.train == "a/{0..3}.tar"
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(base(), ["train.max_steps"])


def test_recipe_round_trips_through_plain_dict(tmp_path):
    r = parse_recipe(base())
    d = recipe_to_dict(r)
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(d))
    assert recipe_to_dict(load_recipe(p)) == d


def test_missing_recipe_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_schedules():
    cos = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cos, 110) == pytest.approx(0.1)
    assert lr_factor(9, cos, 110) == pytest.approx(1.0)
    assert lr_factor(60, cos, 110) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, cos, 110) == pytest.approx(0.1)
    lin = ScheduleConfig(name="linear")
    assert lr_factor(50, lin, 100) == pytest.approx(0.5)
    assert lr_factor(50, ScheduleConfig(name="constant", warmup_steps=5), 100) == 1.0


def test_a_bool_is_not_a_zero_stage():
    # True == 1 in Python: YAML's `zero_stage: true` once passed as stage 1
    for value in (True, False, 1.0):
        with pytest.raises(ConfigError, match=r"deepspeed.zero_stage: .* is not one of 0, 1, 2, 3"):
            parse_recipe(base() | {"deepspeed": {"zero_stage": value}})
    assert parse_recipe(base() | {"deepspeed": {"zero_stage": 1}}).deepspeed.zero_stage == 1


def test_preset_fields_then_explicit_keys_even_ones_equal_to_a_default():
    raw = {"model": {"name": "sam_clip", "preset": "tiny", "img_size": 1024, "depth": 2,
                     "global_attn_indexes": [1]},
           "task": {"name": "sam_clip", "stage": "probe"}}
    model = parse_recipe(raw).model
    # img_size 1024 is the dataclass default (SAM ViT-B) and the tiny preset says 32: the recipe wins
    assert (model.img_size, model.depth, model.embed_dim) == (1024, 2, 64)
    resolved = recipe_to_dict(parse_recipe(raw))["model"]
    assert "preset" not in resolved and resolved["embed_dim"] == 64  # recipe.json is fully explicit
    assert parse_recipe({**raw, "model": resolved}).model == model


def test_unknown_or_unsupported_preset_is_one_line():
    with pytest.raises(ConfigError, match=r"^model.preset: unknown openelm preset 'openelm_7b' \(known: "
                                          r"openelm_270m, .*tiny, demo\)$"):
        parse_recipe({"model": {"name": "openelm", "preset": "openelm_7b"}, "task": {"name": "causal_lm"}})
    with pytest.raises(ConfigError, match=r"^task.preset: task 'classification' has no presets$"):
        parse_recipe({**base(), "task": {"name": "classification", "preset": "x"}})
    # CLIP reads open_clip's configs: a known ResNet config is refused for what it is
    with pytest.raises(ConfigError, match="ResNet image tower"):
        parse_recipe({"model": {"name": "clip", "preset": "RN50"}, "task": {"name": "clip"}})
    vit = parse_recipe({"model": {"name": "clip", "preset": "ViT-B-32", "text_layers": 2},
                        "task": {"name": "clip"}}).model
    assert (vit.patch_size, vit.vision_width, vit.text_layers) == (32, 768, 2)
