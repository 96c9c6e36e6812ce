"""Dataset reinforcement: recorded augmentations replay bit for bit, the stored logits are the
teacher's, reruns resume, the KD loss matches a hand computation, and a student trains on it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corefm.augment.replay import AugmentSpec, apply, draw, to_tensor, view_digest
from corefm.data import load_manifest
from corefm.data.reinforce import augmentations, find_image, reinforce, teacher_view
from corefm.data.shards import iter_shard
from corefm.eval.teachers import load_teacher
from corefm.tasks.distill import kd_loss, reinforced_view

from tests.e2e.util import corefm_cmd, final, losses, run

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow
RECIPE = ROOT / "projects/vit/configs/digits_tiny.yaml"


def _sets(data: Path, run_dir: Path, **extra) -> list[str]:
    sets = {"run_dir": run_dir, "data.train": data / "train", "data.val": data / "val", "model.width": 32,
            "model.layers": 1, "model.heads": 2, "train.max_steps": 30, "train.micro_batch_size": 32,
            "log.every": 5, "log.progress": False, "eval.every": 0, "checkpoint.every": 0,
            "schedule.warmup_steps": 3, **extra}
    return sum((["--set", f"{k}={v}"] for k, v in sets.items()), [])


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> tuple[Path, Path]:
    """(digits data, a tiny ViT classifier run trained on it: the teacher)."""
    from corefm.data.image_sets import build

    root = tmp_path_factory.mktemp("rf")
    build("digits", root / "digits", train_shards=4, val_shards=2)
    r = run(corefm_cmd("train", str(RECIPE), "--nproc", "1", *_sets(root / "digits", root / "teacher")))
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "digits", root / "teacher"


def _samples(shard_set: Path) -> list[dict]:
    m = load_manifest(shard_set)
    return [s for sh in m.shards for s in iter_shard(f"{m.dir}/{sh.name}", sh.samples)]


def test_draws_are_seeded_and_inside_the_image():
    spec = AugmentSpec(scale=[0.2, 1.0])
    img = Image.new("L", (30, 20))
    a = augmentations("k1", img, spec, 8, seed=0)
    assert a == augmentations("k1", img, spec, 8, seed=0) and a != augmentations("k2", img, spec, 8, seed=0)
    for aug in a:
        top, left, h, w = aug["box"]
        assert 0 <= top and 0 <= left and top + h <= 20 and left + w <= 30 and aug["flip"] in (0, 1)
    # a ratio range the image cannot meet in 10 tries falls back to the centred largest box
    assert draw(AugmentSpec(scale=[1.0, 1.0], ratio=[3.0, 4.0], hflip=False), 30, 20, random.Random(0)) == \
        {"box": [5, 0, 10, 30], "flip": 0}


def test_kd_loss_by_hand():
    student = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    index = torch.tensor([[0, 2], [3, 1]])
    teacher = torch.tensor([[3.0, 1.0], [0.5, 0.0]])
    t = 2.0
    want = 0.0
    for b in range(2):
        p = torch.softmax(teacher[b] / t, -1)
        log_q = torch.log_softmax(student[b] / t, -1)[index[b]]
        want += float((p * (p.log() - log_q)).sum()) * t * t / 2
    assert kd_loss(student, index, teacher, t).item() == pytest.approx(want, rel=1e-6)
    # a student equal to a teacher that stores all classes has zero loss
    full = torch.randn(3, 5)
    assert kd_loss(full, torch.arange(5).expand(3, 5), full).item() == pytest.approx(0.0, abs=1e-6)


def test_reinforce_replays_bit_for_bit_and_resumes(teacher_run, tmp_path):
    data, teacher_dir = teacher_run
    teacher = load_teacher(teacher_dir)
    out = tmp_path / "rf"
    report = reinforce(data / "val", out, teacher, augs=3, topk=4, seed=5, batch=64)
    assert report["resumed"] == 0 and report["samples"] == load_manifest(data / "val").total_samples
    producer = load_manifest(out).producer
    assert producer["augs"] == 3 and producer["topk"] == 4 and producer["version"] == "1"
    assert producer["teacher"]["kind"] == "corefm-run" and producer["teacher"]["num_classes"] == 10
    samples = _samples(out)
    for raw in samples[:20]:
        img = find_image(raw)
        meta = json.loads(raw["reinforce.json"])
        index, logits = np.array(meta["index"]), np.array(meta["logits"], dtype=np.float16)
        assert index.shape == logits.shape == (3, 4) and np.array_equal(logits.astype(np.float64), meta["logits"])
        assert [{k: a[k] for k in ("box", "flip")} for a in meta["augs"]] == \
            augmentations(raw["__key__"], img, AugmentSpec(), 3, seed=5)
        with torch.no_grad():
            for j, aug in enumerate(meta["augs"]):
                view = teacher_view(teacher, img, aug)
                assert view_digest(view) == aug["digest"]  # the replayed view is the one the teacher saw
                top = teacher(view[None]).float().topk(4)
                assert index[j].tolist() == top.indices[0].tolist()
                assert np.array_equal(logits[j], top.values[0].numpy().astype(np.float16))
        # the student's transform replays the view it picks exactly, at its own size
        j = random.Random(1).randrange(3)
        got = reinforced_view(raw, img.convert("L"), 20, 0.5, 0.5, 10, random.Random(1))
        assert torch.equal(got["image"], to_tensor(apply(img.convert("L"), meta["augs"][j], 20), 0.5, 0.5))
        assert got["teacher_index"].tolist() == index[j].tolist()

    # a rerun skips finished shards and writes nothing new; a lost shard is redone identically
    before = load_manifest(out).shards
    (out / before[0].name).unlink()
    again = reinforce(data / "val", out, teacher, augs=3, topk=4, seed=5, batch=64)
    assert again["resumed"] == len(before) - 1
    assert load_manifest(out).shards == before


def test_student_distils_and_bad_setups_are_one_line(teacher_run, tmp_path):
    data, teacher_dir = teacher_run
    rf = tmp_path / "rf"
    r = run(corefm_cmd("data", "reinforce", "--in", str(data / "train"), "--out", str(rf / "train"),
                       "--teacher", str(teacher_dir), "--augs", "2", "--topk", "3"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "views, teacher top-3" in r.stdout
    sets = _sets(data, tmp_path / "student", **{"data.train": rf / "train", "task.distill.enabled": True,
                                                "task.max_shift": 0, "train.max_steps": 20})
    r = run(corefm_cmd("train", str(RECIPE), "--nproc", "1", *sets))
    assert r.returncode == 0, r.stderr[-3000:]
    steps = losses(tmp_path / "student")
    assert steps[20] < steps[5]  # the loss is the KD loss (label_weight 0): the student moves towards the teacher
    logged = [json.loads(x) for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert all(rec["kd"] == rec["loss"] for rec in logged if rec["kind"] == "train")
    assert "accuracy" in final(tmp_path / "student")["eval"]  # held-out eval reads plain shards as before
    # plain shards under task.distill, and a shift that would not apply: one line each, before training
    plain = _sets(data, tmp_path / "bad1", **{"task.distill.enabled": True, "task.max_shift": 0})
    r = run(corefm_cmd("train", str(RECIPE), "--nproc", "1", *plain))
    assert r.returncode == 2 and "task.distill needs reinforced train shards" in r.stderr.strip().splitlines()[-1]
    r = run(corefm_cmd("train", str(RECIPE), "--nproc", "1", *sets, "--set", "task.max_shift=2",
                       "--set", f"run_dir={tmp_path / 'bad2'}"))
    assert r.returncode == 2 and "task.max_shift does not apply with task.distill" in r.stderr
    r = run(corefm_cmd("data", "reinforce", "--in", str(data / "train"), "--out", str(rf / "x"),
                       "--teacher", str(tmp_path), "--augs", "2"))
    assert r.returncode == 2 and r.stderr.strip().startswith("corefm: error:") and "neither" in r.stderr


def test_open_clip_folder_teaches_zero_shot(teacher_run, tmp_path):
    import open_clip

    from projects.clip_pseudo.config import named_config
    from projects.clip_pseudo.model import ClipModel
    from projects.clip_pseudo.openclip_io import save_open_clip

    data, _ = teacher_run
    cfg = named_config("micro")
    torch.manual_seed(0)
    save_open_clip(ClipModel(cfg), cfg, tmp_path / "oc")
    classes = [str(d) for d in range(10)]
    teacher = load_teacher(tmp_path / "oc", classes)
    assert (teacher.image_size, teacher.channels, teacher.num_classes) == (32, 3, 10)
    report = reinforce(data / "val", tmp_path / "rf", teacher, augs=1, topk=2)
    assert report["samples"] > 0 and load_manifest(tmp_path / "rf").producer["teacher"]["classes"] == classes
    # its logits are open_clip's own zero-shot scores: 100 x cosine with the prompt-averaged class embeddings
    model, _, _ = open_clip.create_model_and_transforms("local-dir:" + str(tmp_path / "oc"))
    tokenizer = open_clip.get_tokenizer("local-dir:" + str(tmp_path / "oc"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        columns = []
        for c in classes:
            prompts = [t(c) for t in open_clip.SIMPLE_IMAGENET_TEMPLATES]
            emb = torch.nn.functional.normalize(model.encode_text(tokenizer(prompts)), dim=-1).mean(0)
            columns.append(torch.nn.functional.normalize(emb, dim=-1))
        torch.testing.assert_close(teacher(x), 100 * img @ torch.stack(columns, 1), rtol=1e-4, atol=1e-3)
    with pytest.raises(Exception, match="needs class names"):
        load_teacher(tmp_path / "oc", [])
