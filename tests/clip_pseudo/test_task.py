"""The clip task: per-sample decoding, masked multi-task loss, eval sums, recipes, distributed loss."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from corefm.data import DataConfig, SkipSample, build_loader
from corefm.errors import ConfigError
from corefm.train.build import build_task
from corefm.train.config import load_recipe, parse_recipe
from projects.clip_pseudo.heads import HeadSpec
from projects.clip_pseudo.losses import masked_mean, per_sample_loss

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "projects/clip_pseudo/configs").glob("*.yaml"))
HEADS = [{"name": "seg", "kind": "segmentation", "key": "seg.png", "channels": 2, "up": 4},
         {"name": "edges", "kind": "binary", "key": "edges.png", "up": 2},
         {"name": "depth", "kind": "regression", "key": "depth.png", "ignore_zero": True}]


def _recipe(heads=HEADS, **task) -> dict:
    return {"model": {"name": "clip", "embed_dim": 32, "image_size": 28, "patch_size": 4, "vision_width": 32,
                      "vision_layers": 1, "vision_head_width": 16, "context_length": 16, "text_width": 32,
                      "text_heads": 2, "text_layers": 1},
            "task": {"name": "clip", "heads": heads, "class_names": ["t-shirt", "trouser", "bag"], **task}}


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _sample(**extra) -> dict:
    img = np.zeros((28, 28), np.uint8)
    img[6:22, 4:14] = 200
    seg = (img > 0).astype(np.uint8)
    return {"__key__": "k", "png": _png(img), "txt": b"a photo of a bag", "cls": b"2", "seg.png": _png(seg),
            "edges.png": _png(np.where(seg, 0, 255).astype(np.uint8)), **extra}


def test_sample_transform_labels_masks_and_flip():
    task = build_task(parse_recipe(_recipe(hflip=True)))
    fn = task.sample_transform(False)
    out = fn(_sample())
    assert out["image"].shape == (3, 28, 28) and out["text"].shape == (16,) and int(out["label"]) == 2
    assert out["label_seg"].dtype == torch.long and out["label_seg"][10, 5] == 1 and out["label_seg"][10, 20] == 0
    assert float(out["mask_seg"]) == 1.0 and float(out["mask_depth"]) == 0.0  # no depth.png: masked out
    assert (out["label_depth"] == 0).all()
    # an undecodable label masks only that head
    assert float(fn(_sample(**{"seg.png": b"junk"}))["mask_seg"]) == 0.0
    # training flips image and labels together (the loader seeds python's RNG per batch)
    import random

    train_fn = task.sample_transform(True)
    flips = []
    for seed in range(8):
        random.seed(seed)
        o = train_fn(_sample())
        flips.append(int(o["label_seg"][10, 20]))  # the object sits left; flipped it sits right
        assert torch.equal(o["label_seg"].flip(-1) if flips[-1] else o["label_seg"], out["label_seg"])
        assert torch.equal(o["image"].flip(-1) if flips[-1] else o["image"], out["image"])
    assert 0 < sum(flips) < 8


@pytest.mark.parametrize("bad, reason", [
    ({"txt": b"   "}, "empty"), ({"txt": b"\xff\xfe"}, "not UTF-8"), ({"txt": None}, "no .txt"),
    ({"png": b"\x89PNG broken"}, "undecodable"), ({"cls": b"two"}, "bad .cls")])
def test_bad_samples_raise_skip(bad, reason):
    task = build_task(parse_recipe(_recipe()))
    sample = {k: v for k, v in {**_sample(), **bad}.items() if v is not None}
    with pytest.raises(SkipSample, match=reason):
        task.sample_transform(True)(sample)


def test_loss_is_clip_plus_weighted_masked_task_losses():
    task = build_task(parse_recipe(_recipe()))
    fn = task.sample_transform(True)
    batch = torch.utils.data.default_collate([fn(_sample()) for _ in range(4)])
    batch["mask_edges"][1:] = 0  # only sample 0 has an edge label
    out = task(batch)
    assert set(out) == {"loss", "clip_loss", "logit_scale", "loss_seg", "loss_edges", "loss_depth"}
    assert float(out["loss_depth"]) == 0.0  # no sample has depth: zero, yet in the graph
    expected = out["clip_loss"] + out["loss_seg"] + out["loss_edges"]
    torch.testing.assert_close(out["loss"].detach(), expected)
    out["loss"].backward()
    assert task.model.heads["depth"].out.weight.grad is not None
    # plain CLIP: the one switch
    plain = build_task(parse_recipe(_recipe(heads=[])))
    p = plain({k: v for k, v in batch.items() if not k.startswith(("label_", "mask_"))})
    assert set(p) == {"loss", "clip_loss", "logit_scale"} and len(plain.model.heads) == 0


def test_masked_losses():
    seg = HeadSpec("s", "segmentation", "seg.png", channels=3)
    pred = torch.zeros(2, 3, 4, 4)
    target = torch.full((2, 4, 4), 255)
    target[0, :2] = 1
    per = per_sample_loss(seg, pred, target)
    torch.testing.assert_close(per, torch.tensor([np.log(3), 0.0], dtype=torch.float32))
    assert float(masked_mean(per, torch.tensor([1.0, 0.0]))) == pytest.approx(np.log(3))
    assert float(masked_mean(per, torch.zeros(2))) == 0.0
    depth = HeadSpec("d", "regression", "depth.png", ignore_zero=True)
    t = torch.tensor([[[[0.0, 0.5]]]])
    assert float(per_sample_loss(depth, torch.tensor([[[[9.0, 0.25]]]]), t)) == pytest.approx(0.25)
    normals = HeadSpec("n", "regression", "normal.png", channels=3, loss="cosine")
    v = torch.randn(1, 3, 2, 2)
    assert float(per_sample_loss(normals, v, v)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="does not fit kind"):
        HeadSpec("x", "binary", "edges.png", loss="l1")


def test_eval_sums_give_zero_shot_and_head_metrics(fashion_pl):
    recipe = parse_recipe(_recipe(heads=HEADS[:2], class_names=[]) | {"data": {"val": str(fashion_pl / "val")}})
    task = build_task(recipe)
    assert task.class_names[9] == "ankle boot"  # from the val manifest's producer
    loader = build_loader(str(fashion_pl / "val"), DataConfig(num_workers=0), rank=0, world_size=1, batch_size=32,
                          map_fn=task.sample_transform(False))
    task.eval()
    with torch.no_grad():
        sums = {k: float(v) for k, v in task(next(iter(loader)), mode="eval").items()}
    metrics = task.eval_metrics(sums)
    assert metrics["samples"] == 32 and 0 <= metrics["zero_shot_top1"] <= metrics["zero_shot_top5"] <= 1
    assert 0 <= metrics["seg_miou"] <= 1 and 0 <= metrics["edges_f1"] <= 1


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipes_build(path):
    recipe = load_recipe(path)
    with torch.device("meta"):
        task = build_task(recipe)
    if recipe.model.image_size == 224:  # the paper-like recipe: open_clip's ViT-B/16 plus heads
        import open_clip

        with torch.device("meta"):
            ref = open_clip.CLIP(**open_clip.get_model_config("ViT-B-16"))
        towers = sum(p.numel() for n, p in task.model.named_parameters() if not n.startswith("heads."))
        assert towers == sum(p.numel() for p in ref.parameters())
        assert {h.key for h in recipe.task.heads} >= {"seg.png", "depth.png", "normal.png", "boxes.json"}


def test_siglip_needs_a_bias():
    with pytest.raises(ConfigError, match="logit bias"):
        build_task(parse_recipe(_recipe(loss="siglip")))
    r = _recipe(loss="siglip")
    r["model"] |= {"init_logit_bias": -10.0, "init_logit_scale": 2.302585}
    task = build_task(parse_recipe(r))
    fn = task.sample_transform(True)
    batch = torch.utils.data.default_collate([fn(_sample()) for _ in range(3)])
    assert torch.isfinite(task(batch)["loss"])


def _distributed_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    from projects.clip_pseudo.losses import build_contrastive_loss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen), dim=-1)
    mine_i = img[rank * 4:(rank + 1) * 4].clone().requires_grad_()
    mine_t = txt[rank * 4:(rank + 1) * 4].clone().requires_grad_()
    loss = build_contrastive_loss("clip", local_loss=True, gather_with_grad=True)(mine_i, mine_t, torch.tensor([10.0]))
    loss.backward()
    # plain lists: shared-memory tensors would vanish with this process before the parent reads them
    queue.put((rank, float(loss.detach()), mine_i.grad.tolist(), mine_t.grad.tolist()))
    dist.destroy_process_group()


def test_clip_loss_across_ranks_equals_full_batch_loss():
    """2 gloo ranks with local_loss + gather_with_grad: the mean of the ranks' losses and the
    ranks' gradients (averaged as DeepSpeed averages them) equal one process on the whole batch."""
    import torch.multiprocessing as mp
    from open_clip.loss import ClipLoss

    from corefm.train.launcher import free_port

    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_distributed_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen), dim=-1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen), dim=-1).requires_grad_()
    full = ClipLoss()(img, txt, torch.tensor([10.0]))
    full.backward()
    assert np.mean([r[1] for r in results]) == pytest.approx(float(full.detach()), rel=1e-5)
    torch.testing.assert_close(torch.tensor(sum((r[2] for r in results), [])) / 2, img.grad)
    torch.testing.assert_close(torch.tensor(sum((r[3] for r in results), [])) / 2, txt.grad)


def test_logit_scale_is_bounded_by_the_trainer_not_cut_in_the_forward():
    """As open_clip: the scale is clamped to [0, log 100] after each optimizer step (the trainer reads
    parameter_bounds; tests/train/test_bounds.py runs it under ZeRO 1/2/3). In the forward it is not
    clamped, so even past the bound its gradient flows and it can come back."""
    import math

    task = build_task(parse_recipe(_recipe(heads=[])))
    assert task.parameter_bounds() == {"model.logit_scale": (0.0, math.log(100.0))}
    assert "model.logit_scale" in dict(task.named_parameters())
    with torch.no_grad():
        task.model.logit_scale.fill_(math.log(100.0) + 0.5)
    fn = task.sample_transform(True)
    batch = torch.utils.data.default_collate([fn(_sample(txt=t)) for t in (b"a bag", b"a shoe", b"a coat")])
    task({k: v for k, v in batch.items() if not k.startswith(("label_", "mask_"))})["loss"].backward()
    assert float(task.model.logit_scale.grad.abs().sum()) > 0


def test_random_resized_crop_cuts_image_and_labels_alike_and_replays():
    """open_clip's training crop (area 0.9-1.0 in the paper-scale recipe): one region of the image and
    of its pseudo-labels, drawn from torch's RNG (which the loader seeds per batch)."""
    task = build_task(parse_recipe(_recipe(random_resized_crop=[0.3, 0.5])))
    fn = task.sample_transform(True)
    torch.manual_seed(0)
    a = fn(_sample())
    torch.manual_seed(0)
    b = fn(_sample())
    torch.testing.assert_close(a["image"], b["image"])
    assert torch.equal(a["label_seg"], b["label_seg"])
    plain = task.sample_transform(False)(_sample())  # eval: the centre fit, no crop
    assert not torch.equal(a["image"], plain["image"])
    # the crop is the same region in both: the label marks the image's bright pixels, before and after
    bright = a["image"].mean(0) > a["image"].mean()
    seg = torch.nn.functional.interpolate(a["label_seg"][None, None].float(), size=bright.shape, mode="nearest")[0, 0]
    assert (bright == (seg > 0)).float().mean() > 0.9
    recipe = load_recipe(ROOT / "projects/clip_pseudo/configs/vit_b16_pseudo.yaml")
    assert recipe.task.random_resized_crop == [0.9, 1.0]
    with pytest.raises(ConfigError, match="random_resized_crop"):
        build_task(parse_recipe(_recipe(random_resized_crop=[0.9])))
