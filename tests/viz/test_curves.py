"""`corefm plot`: real runs' metrics.jsonl drawn to a PNG of the expected size, resumed steps drawn once,
samples/tokens on the x axis, and the one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from corefm.errors import ConfigError
from corefm.viz.curves import batch_segments, figure_pixels, load_run, moving_average, samples_at, x_values
from tests.e2e.util import corefm_cmd, error_line, losses, run
from tests.viz.conftest import pixels_near, png

C0, C1 = "#1f77b4", "#ff7f0e"  # matplotlib's first two line colours: the first and the second run


def _plot(capsys, *args: str) -> tuple[int, str, str]:
    from corefm.cli import main

    rc = main(["plot", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_resumed_run_is_read_once_per_step(resumed_run):
    metrics = load_run(resumed_run)
    assert sorted(metrics.records["train"]) == list(range(1, 25))  # two processes, every step once
    assert sorted(metrics.records["eval"]) == [6, 12, 18, 24]
    assert [e["kind"] for e in metrics.events] == ["recipe_change"]  # the resume raised train.max_steps
    steps, values = metrics.series("train", "loss")
    assert dict(zip(steps.tolist(), values.tolist())) == pytest.approx(losses(resumed_run))


def test_plot_writes_the_default_panels(resumed_run, tmp_path, capsys):
    out = tmp_path / "curves.png"
    rc, stdout, _ = _plot(capsys, str(resumed_run), "--out", str(out))
    assert rc == 0 and stdout.strip() == f"wrote {out}"
    size, colours, rgb = png(out)
    assert size == figure_pixels(3) == (1280, 720)  # loss, eval.accuracy, eval.loss (eval.samples is a count)
    assert colours > 100  # axes, text, antialiased curves: not a blank or one-colour picture
    assert pixels_near(rgb, C0) > 300  # the curves are drawn, in the first run's colour
    assert pixels_near(rgb, C1) == 0  # and there is no second run


def test_two_runs_overlaid_smoothed_against_samples(resumed_run, tmp_path, capsys):
    # a second run: the same records, then step 5 logged again (as a killed and resumed run would)
    other = tmp_path / "other_run"
    shutil.copytree(resumed_run, other, ignore=shutil.ignore_patterns("*.safetensors", "*.pt"))
    with open(other / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "kind": "train", "loss": 9.5, "lr": 0.001}) + "\n")
    assert load_run(other).records["train"][5]["loss"] == 9.5  # the latest record of a step wins
    out = tmp_path / "two.png"
    rc, _, _ = _plot(capsys, str(resumed_run), str(other), "--metrics", "loss,eval.accuracy", "--smooth", "4",
                     "--x", "samples", "--out", str(out))
    assert rc == 0
    size, colours, rgb = png(out)
    assert size == figure_pixels(2) == (1280, 360)
    assert colours > 100 and pixels_near(rgb, C0) > 200 and pixels_near(rgb, C1) > 200  # both runs drawn


def test_samples_follow_the_batch_and_tokens_the_logged_rates(resumed_run, tmp_path):
    metrics = load_run(resumed_run)
    # one rank x micro-batch 16 x grad_accum 1, read from recipe.json and a checkpoint's meta.json
    assert batch_segments(metrics) == [(0, 16)]
    np.testing.assert_array_equal(x_values(metrics, np.array([1, 6, 24]), "samples"), [16, 96, 384])
    with pytest.raises(ConfigError, match="logs no tokens_per_s"):
        x_values(metrics, np.array([1]), "tokens")
    # a run resumed on 2 ranks at step 4 with grad_accum 2 -> 1 (the global batch kept), then 4 ranks at 6
    run_dir = tmp_path / "elastic"
    run_dir.mkdir()
    (run_dir / "recipe.json").write_text(json.dumps({"train": {"micro_batch_size": 8, "grad_accum": 1}}))
    records = [{"step": s, "kind": "train", "loss": 1.0, "samples_per_s": 10.0, "tokens_per_s": 10.0 * (s + 1)}
               for s in (2, 4, 6, 8)]
    records.insert(2, {"step": 4, "kind": "world_size_change", "from": 1, "to": 2})
    records.insert(3, {"step": 4, "kind": "recipe_change", "train.grad_accum": [2, 1]})
    records.insert(5, {"step": 6, "kind": "world_size_change", "from": 2, "to": 4})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    elastic = load_run(run_dir)
    assert batch_segments(elastic) == [(0, 16), (4, 16), (6, 32)]
    np.testing.assert_array_equal(samples_at(np.array([2, 4, 5, 6, 8]), batch_segments(elastic)),
                                  [32, 64, 80, 96, 160])
    # tokens per window = the window's samples x tokens_per_s / samples_per_s (3, 5, 7, 9 tokens a sample)
    np.testing.assert_allclose(x_values(elastic, np.array([2, 4, 6, 8]), "tokens"),
                               np.cumsum([32 * 3, 32 * 5, 32 * 7, 64 * 9]))


def test_moving_average_is_trailing_and_skips_gaps():
    v = np.array([1.0, 3.0, np.nan, 5.0, 7.0])
    np.testing.assert_allclose(moving_average(v, 2), [1.0, 2.0, 3.0, 5.0, 6.0])
    np.testing.assert_array_equal(moving_average(v, 1), v)


def test_errors_are_one_line(resumed_run, tmp_path, capsys):
    rc, _, err = _plot(capsys, str(tmp_path))  # a folder without metrics.jsonl
    assert rc == 2 and err.strip() == f"corefm: error: {tmp_path} has no metrics.jsonl (not a corefm run folder, " \
                                      "or trained with log.jsonl: false)"
    rc, _, err = _plot(capsys, str(resumed_run), "--metrics", "loss,eval.acuracy", "--out", str(tmp_path / "a.png"))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "unknown metric 'eval.acuracy'" in err and "known: loss, acc, lr," in err and "eval.accuracy" in err
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    rc, _, err = _plot(capsys, str(resumed_run), "--out", str(blocker / "x.png"))  # its folder is a file
    assert rc == 2 and err.startswith(f"corefm: error: --out {blocker / 'x.png'} cannot be written")
    rc, _, err = _plot(capsys, str(resumed_run), "--out", str(tmp_path / "x.txt"))
    assert rc == 2 and "must end in .png" in err
    rc, _, err = _plot(capsys, str(resumed_run), "--x", "tokens", "--out", str(tmp_path / "t.png"))
    assert rc == 2 and "--x tokens" in err and "no tokens_per_s" in err
    assert not list(tmp_path.glob("*.png"))  # no picture from a refused command


def test_the_command_prints_one_error_line(resumed_run, tmp_path):
    r = run(corefm_cmd("plot", str(resumed_run), "--metrics", "nope", "--out", str(tmp_path / "n.png")))
    error_line(r, "unknown metric 'nope'", "known: loss")
    r = run(corefm_cmd("plot", str(tmp_path / "missing")))
    error_line(r, "does not exist")


def test_help(capsys):
    from corefm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["plot", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: corefm plot") and "--smooth N" in out and "{step,samples,tokens}" in out
