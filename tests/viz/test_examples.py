"""--save-examples: the CLIP + pseudo-label eval and the SAM-CLIP eval draw their dense predictions."""

from __future__ import annotations

import numpy as np

from corefm.viz.grid import Panel, colorize, grid_pixels, overlay, save_grid
from tests.viz.conftest import make_clip_run, png

FASHION = "t-shirt,trouser,pullover,dress,coat,sandal,shirt,sneaker,bag,ankle boot"


def _main(capsys, *args: str) -> tuple[int, str, str]:
    from corefm.cli import main

    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_grid_size_colours_and_marks(tmp_path):
    image = np.linspace(0, 1, 16 * 16 * 3).reshape(16, 16, 3)
    seg = colorize(np.array([[0, 1], [2, 255]]), 3, ignore=255)
    assert seg[1, 1].tolist() == [1.0, 1.0, 1.0] and seg[0, 0].tolist() == [0.0, 0.0, 0.0]
    tinted = overlay(np.zeros((4, 4, 3)), np.eye(2), color=(1.0, 0.0, 0.0), alpha=1.0)  # a 2x2 mask onto 4x4
    assert tinted[0, 0].tolist() == [1.0, 0.0, 0.0] and tinted[0, 3].tolist() == [0.0, 0.0, 0.0]
    marks = []
    rows = [[Panel(image, draw=marks.append), Panel(seg), None], [image, Panel(None, note="no label"), seg]]
    out = save_grid(rows, tmp_path / "g.png", columns=["a", "b", "c"], legend=[("x", (1, 0, 0))], title="t")
    size, colours, _ = png(out)
    assert size == grid_pixels(2, 3, title=True, columns=True, legend=1) and colours > 50
    assert len(marks) == 1  # the project's own drawing ran on its panel


def test_clip_eval_draws_each_head_and_probe(fashion_pl_small, tmp_path, capsys):
    run_dir = make_clip_run(tmp_path / "clip_run", fashion_pl_small)
    out = tmp_path / "examples"
    rc, stdout, err = _main(capsys, "clip", "eval", str(run_dir), "--data", str(fashion_pl_small / "val"),
                            "--max-samples", "32", "--probe", "seg,semantic", "--probe-train",
                            str(fashion_pl_small / "train"), "--probe-samples", "48", "--probe-epochs", "1",
                            "--classes", FASHION, "--save-examples", "3", "--examples-dir", str(out))
    assert rc == 0, err[-3000:]
    assert '"probe_seg_miou"' in stdout  # the metrics are still printed as before
    names = sorted(p.name for p in out.iterdir())
    assert names == ["head_edges.png", "head_seg.png", "probe_seg.png", "probe_semantic.png"]
    legends = {"head_edges.png": 0, "head_seg.png": 2, "probe_seg.png": 2, "probe_semantic.png": 11}
    for name, legend in legends.items():
        size, colours, _ = png(out / name)
        # 3 images x (image, expert pseudo-label, prediction); a class legend under class maps
        assert size == grid_pixels(3, 3, title=True, columns=True, legend=legend), name
        assert colours > 50, name
        assert f"wrote {out / name}" in err


def test_clip_eval_refuses_examples_without_a_dense_head(fashion_pl_small, tmp_path, capsys):
    run_dir = make_clip_run(tmp_path / "plain", fashion_pl_small, "task.heads=[]")
    rc, _, err = _main(capsys, "clip", "eval", str(run_dir), "--data", str(fashion_pl_small / "val"),
                       "--save-examples", "2")
    assert rc == 2 and err.strip().splitlines() == [
        f"corefm: error: --save-examples: {run_dir} has no dense heads (task.heads) and no --probe is fitted: "
        "there is no dense prediction to draw"]


def test_sam_clip_eval_draws_prompts_masks_and_the_zero_shot_map(tiny_run, fashion_seg, tmp_path, capsys):
    out = tmp_path / "examples"
    rc, stdout, err = _main(capsys, "sam-clip", "eval", str(tiny_run), "--data", str(fashion_seg / "val"),
                            "--max-samples", "16", "--save-examples", "3", "--examples-dir", str(out))
    assert rc == 0, err[-3000:]
    assert '"semseg_miou"' in stdout
    size, colours, rgb = png(out / "sam_clip_prompts.png")
    # 3 SAM samples x (point prompt, teacher mask, student mask, box prompt, teacher mask, student mask)
    assert size == grid_pixels(3, 6, title=True, columns=True) and colours > 50
    yellow = ((rgb[..., 0] > 230) & (rgb[..., 1] > 230) & (rgb[..., 2] < 40)).sum()
    assert yellow > 50  # the prompts (a yellow star, a yellow box) are drawn on the images
    size, colours, _ = png(out / "sam_clip_semseg.png")
    assert size == grid_pixels(3, 3, title=True, columns=True, legend=11) and colours > 50  # background + 10


def test_sam_clip_eval_refuses_a_negative_count(tiny_run, fashion_seg, capsys):
    rc, _, err = _main(capsys, "sam-clip", "eval", str(tiny_run), "--data", str(fashion_seg / "val"),
                       "--save-examples", "-1")
    assert rc == 2 and err.strip() == "corefm: error: --save-examples -1: a number of examples, 0 for none"
