"""The `corefm` command on real data: the demo trains, bad input costs one line, runs release."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.e2e.util import corefm_cmd, error_line, final, losses, run, small_overrides, train_cmd

pytestmark = pytest.mark.slow


def test_unknown_recipe_key_is_one_line(digits, tmp_path):
    r = run(train_cmd(small_overrides(digits, tmp_path / "r") + ["train.max_stepz=3"]))
    line = error_line(r)
    assert "'train.max_stepz'" in line and "max_steps" in line


def test_missing_shard_is_one_line(digits, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits / "train", data)
    (data / "train-000003.tar").unlink()
    r = run(train_cmd(small_overrides(digits, tmp_path / "r", **{"data.train": str(data)})))
    error_line(r, "train-000003.tar")


def test_truncated_shard_is_counted_and_skipped(digits, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits / "train", data)
    shard = data / "train-000005.tar"
    shard.write_bytes(shard.read_bytes()[:5000])  # cut mid-member
    run_dir = tmp_path / "r"
    overrides = small_overrides(digits, run_dir, **{"data.train": str(data), "data.check_manifest": False,
                                                    "data.max_skip_fraction": 0.5, "train.max_steps": 100,
                                                    "log.every": 50})
    r = run(train_cmd(overrides, nproc=1))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "train-000005.tar" in r.stderr  # named in a warning once the epoch reaches it
    assert final(run_dir)["step"] == 100


def test_too_many_corrupt_shards_stop_with_one_line(digits, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits / "train", data)
    for shard in sorted(data.glob("*.tar"))[:6]:
        shard.write_bytes(b"not a tar file at all" * 10)
    overrides = small_overrides(digits, tmp_path / "r", **{"data.train": str(data), "data.check_manifest": False})
    r = run(train_cmd(overrides, nproc=1))
    error_line(r, "unreadable")


def test_train_eval_export_release(digits, tmp_path):
    run_dir = tmp_path / "r"
    r = run(train_cmd(small_overrides(digits, run_dir, **{"train.max_steps": 120, "checkpoint.every": 0,
                                                          "model.width": 48, "log.every": 20,
                                                          "schedule.name": "constant", "task.max_shift": 0}),
                      nproc=1))
    assert r.returncode == 0, r.stderr[-3000:]
    steps = losses(run_dir)
    assert steps[120] < steps[20] - 0.5, steps  # it learns
    result = final(run_dir)
    assert result["eval"]["accuracy"] > 0.5, result  # 10 classes: chance is 0.1
    assert result["eval"]["samples"] == 299  # every held-out digit exactly once

    ev = run(corefm_cmd("eval", str(run_dir)))
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads(ev.stdout)["accuracy"] == pytest.approx(result["eval"]["accuracy"])

    ex = run(corefm_cmd("export", str(run_dir), "--out", str(tmp_path / "again.safetensors")))
    assert ex.returncode == 0, ex.stderr[-3000:]
    from safetensors.torch import load_file

    a, b = load_file(str(run_dir / "model.safetensors")), load_file(str(tmp_path / "again.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)

    rel = run(corefm_cmd("release", str(run_dir), "--out", str(tmp_path / "release")))
    assert rel.returncode == 0, rel.stderr[-3000:]
    assert "dry run" in rel.stdout and "model.safetensors" in rel.stdout
    card = (tmp_path / "release" / "README.md").read_text()
    assert "accuracy" in card and "vit_classifier" in card


@pytest.mark.parametrize("command", ["", "train", "eval", "export", "release", "data", "data images"])
def test_help_explains_each_command(command, capsys):
    from corefm.cli import main

    with pytest.raises(SystemExit) as e:
        main([*command.split(), "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: corefm") and len(out.splitlines()) > 5


def test_bf16_zero1_grad_accum_with_wandb_offline(digits, tmp_path):
    run_dir = tmp_path / "r"
    overrides = small_overrides(digits, run_dir, **{"deepspeed.zero_stage": 1, "deepspeed.precision": "bf16",
                                                    "train.grad_accum": 2, "train.max_steps": 10,
                                                    "log.wandb": "offline", "log.every": 5})
    env_free = run(train_cmd(overrides, nproc=2))
    assert env_free.returncode == 0, env_free.stderr[-3000:]
    steps = losses(run_dir)
    assert sorted(steps) == [5, 10] and all(v == v and v < 5 for v in steps.values())
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb offline files missing"
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "model.safetensors"))
    assert all(t.dtype.is_floating_point and str(t.dtype) == "torch.float32" for t in weights.values())


def test_nonfinite_loss_stops_with_its_step(digits, tmp_path):
    overrides = small_overrides(digits, tmp_path / "r", **{"optim.lr": 1.0e30, "train.on_nonfinite": "stop",
                                                           "schedule.warmup_steps": 0})
    r = run(train_cmd(overrides, nproc=1))
    line = error_line(r)
    assert "non-finite loss" in line and "at step" in line


def test_nonfinite_steps_are_skipped_until_too_many_in_a_row(digits, tmp_path):
    # lr 1e30: the first step blows the weights up and every later loss is non-finite; each such step
    # is skipped on both ranks and reported, and the third in a row ends the run with one line.
    overrides = small_overrides(digits, tmp_path / "r", **{"optim.lr": 1.0e30, "schedule.warmup_steps": 0,
                                                           "train.max_consecutive_nonfinite": 3})
    r = run(train_cmd(overrides, nproc=2))
    assert r.stdout.count("those optimizer steps were skipped") == 2
    line = error_line(r)
    assert "non-finite loss on 2 rank(s) at step 4 (3 in a row)" in line, line


def test_compiled_deterministic_run_at_zero3(digits, tmp_path):
    run_dir = tmp_path / "r"
    overrides = small_overrides(digits, run_dir, **{"deepspeed.zero_stage": 3, "model.compile": "true",
                                                    "train.deterministic": "true", "train.max_steps": 4,
                                                    "checkpoint.every": 0, "eval.max_batches": 2})
    r = run(train_cmd(overrides, nproc=1))
    assert r.returncode == 0, r.stderr[-3000:]
    steps = losses(run_dir)
    assert sorted(steps) == [1, 2, 3, 4] and all(v == v for v in steps.values())
    assert json.loads((run_dir / "recipe.json").read_text())["model"]["compile"] is True
    assert (run_dir / "model.safetensors").is_file()


def test_deepspeeds_own_launcher_runs_the_worker(digits, tmp_path):
    run_dir = tmp_path / "r"
    cmd = train_cmd(small_overrides(digits, run_dir, **{"train.max_steps": 6, "checkpoint.every": 3}))
    r = run(cmd + ["--launcher", "deepspeed"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert final(run_dir)["step"] == 6 and sorted(losses(run_dir)) == list(range(1, 7))


def test_deepspeeds_zero_to_fp32_runs_on_a_checkpoint_as_its_header_says(digits, tmp_path):
    """DeepSpeed copies zero_to_fp32.py into each checkpoint, to be run there as
    ``python zero_to_fp32.py . OUT``; on a 2-rank ZeRO-2 checkpoint it gives corefm's export."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    run_dir = tmp_path / "r"
    r = run(train_cmd(small_overrides(digits, run_dir, **{"train.max_steps": 4, "checkpoint.every": 0}), nproc=2))
    assert r.returncode == 0, r.stderr[-3000:]
    step = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    out = subprocess.run([sys.executable, "zero_to_fp32.py", ".", str(tmp_path / "fp32"), "--safe_serialization"],
                         cwd=step, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    theirs = {k.removeprefix("model."): v for k, v in load_file(str(tmp_path / "fp32" / "model.safetensors")).items()}
    ours = load_file(str(run_dir / "model.safetensors"))
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
