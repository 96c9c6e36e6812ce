"""The CatLIP model, loss and transfer head against hand-computed references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from corefm.errors import ConfigError
from corefm.tasks.base import TaskContext
from projects.catlip.model import CatlipConfig, CatlipModel
from projects.catlip.shards import Vocabulary, build
from projects.catlip.task import CatlipTask, CatlipTaskConfig, build_catlip_task
from projects.catlip.transfer import class_rows, fit_linear, transfer_head
from projects.clip_pseudo.config import named_config
from projects.clip_pseudo.model import ClipModel
from tests.conftest import require_wordnet

MICRO = dict(image_size=16, patch_size=4, vision_width=32, vision_layers=1, vision_head_width=16, embed_dim=24)


def _vocab(n: int) -> Vocabulary:
    return Vocabulary([f"n{k:08d}" for k in range(n)], [f"w{k}" for k in range(n)], [5, 9, 7, 1][:n], 1, 10)


def test_bce_summed_over_synsets_and_eval_sums():
    torch.manual_seed(0)
    model = CatlipModel(CatlipConfig(**MICRO, num_classes=4))
    task = CatlipTask(CatlipTaskConfig(), model, _vocab(4))
    images = torch.randn(3, 3, 16, 16)
    target = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1]])
    out = task({"image": images, "target": target})
    z = model(images).detach().double()
    ref = sum(-(y * math.log(torch.sigmoid(x)) + (1 - y) * math.log(1 - torch.sigmoid(x)))
              for row_x, row_y in zip(z, target.double()) for x, y in zip(row_x, row_y)) / 3
    assert out["loss"].item() == pytest.approx(float(ref), rel=1e-5)
    with torch.no_grad():
        sums = task({"image": images, "target": target}, mode="eval")
    top = z.argmax(-1)
    assert sums["top1_sum"].item() == sum(float(target[i, top[i]]) for i in range(3))
    assert sums["prior_sum"].item() == 1.0  # the most frequent synset (index 1, count 9) is sample 1's
    metrics = task.eval_metrics({k: float(v) for k, v in sums.items()})
    assert metrics["recall5"] == pytest.approx(1.0)  # 4 classes: every label is in the top 5
    assert metrics["prior_top1"] == pytest.approx(1 / 3)


def test_synset_metrics_by_hand():
    from projects.catlip.evaluate import synset_metrics

    logits = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4]])
    target = torch.tensor([[0.0, 1, 1, 0], [1.0, 0, 0, 0]])
    m = synset_metrics(logits, target, prior_class=1)
    assert m["top1_precision"] == 0.0 and m["prior_top1"] == 0.5 and m["recall5"] == 1.0
    # image 0 ranks its positives 2nd and 3rd: AP (1/2 + 2/3) / 2; image 1 ranks its one 4th: AP 1/4
    assert m["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 / 4) / 2)


def test_same_image_tower_as_clip():
    clip, catlip = ClipModel(named_config("tiny")), CatlipModel(CatlipConfig(**named_config("tiny").__dict__,
                                                                               num_classes=7))
    shapes = lambda m: {k: v.shape for k, v in m.visual.state_dict().items()}  # noqa: E731
    assert shapes(clip) == shapes(catlip)
    assert catlip(torch.randn(2, 3, 28, 28)).shape == (2, 7)


def test_builder_checks_vocabulary_size(tmp_path, captions_it):
    require_wordnet()
    build(captions_it, tmp_path / "cl", min_count=2)
    ctx = TaskContext(train_data=str(tmp_path / "cl" / "train"))
    with pytest.raises(ConfigError, match=r"set model.num_classes=\d+"):
        build_catlip_task(CatlipTaskConfig(), CatlipModel(CatlipConfig(**MICRO, num_classes=3)), ctx)
    with pytest.raises(ConfigError, match="not a CatLIP shard set"):
        build_catlip_task(CatlipTaskConfig(), CatlipModel(CatlipConfig(**MICRO, num_classes=3)),
                          TaskContext(train_data=str(captions_it / "train")))
    with pytest.raises(ConfigError, match="data.val: .* not a CatLIP shard set"):
        build_catlip_task(CatlipTaskConfig(), CatlipModel(CatlipConfig(**MICRO, num_classes=3)),
                          TaskContext(train_data=str(tmp_path / "cl" / "train"), val_data=str(captions_it / "val")))
    with pytest.raises(ConfigError, match="vocabulary size"):
        CatlipConfig(**MICRO)


def test_transfer_head_takes_the_head_nouns_rows():
    require_wordnet()
    from projects.catlip.labels import caption_synsets

    dog, boot, trousers = (caption_synsets(w)[0] for w in ("dog", "boot", "trousers"))
    vocab = Vocabulary(sorted([dog, boot, trousers]), ["a", "b", "c"], [1, 1, 1], 1, 3)
    rows = class_rows(["ankle boot", "pair of trousers", "dog", "spaceship"], vocab)
    index = vocab.index()
    assert rows == [index[boot], index[trousers], index[dog], None]
    classifier = nn.Linear(5, 3)
    head = transfer_head(classifier, rows)
    for c, k in enumerate(rows):
        want_w = classifier.weight[k] if k is not None else torch.zeros(5)
        want_b = classifier.bias[k] if k is not None else torch.zeros(())
        assert torch.equal(head.weight[c], want_w) and torch.equal(head.bias[c], want_b)
    # the mapped head classifies as the synset logits rank those synsets
    x = torch.randn(6, 5)
    torch.testing.assert_close(head(x)[:, :3], classifier(x)[:, rows[:3]], rtol=1e-6, atol=1e-6)
    # and a probe trained from it learns separable labels
    y = (x[:, 0] > 0).long()
    fitted = fit_linear(transfer_head(classifier, rows[:2]), x.repeat(20, 1), y.repeat(20), epochs=30, lr=0.05)
    assert (fitted(x).argmax(-1) == y).all()
