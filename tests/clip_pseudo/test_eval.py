"""Eval pieces: retrieval recall with repeated captions, zero-shot with open_clip's builder, dense probes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from projects.clip_pseudo.config import named_config
from projects.clip_pseudo.heads import HeadSpec
from projects.clip_pseudo.model import ClipModel
from projects.clip_pseudo.probe import delta1_sums, score_probe, semantic_target, train_probe
from projects.clip_pseudo.retrieval import retrieval_recall
from corefm.data.image_sets import FASHION_CLASSES
from corefm.eval.zero_shot import classifier, templates, topk_correct
from corefm.errors import ConfigError


def test_retrieval_recall_standard_and_with_repeated_captions():
    # distinct captions: images 0 and 1 each prefer the other's caption, then their own
    feats = torch.eye(6)
    text = feats.clone()
    text[0] = F.normalize(feats[1] + 0.5 * feats[0], dim=0)
    text[1] = F.normalize(feats[1] + 0.9 * feats[0], dim=0)
    r = retrieval_recall(feats, text, [f"c{i}" for i in range(6)], ks=(1, 2))
    assert r["image_to_text_R@1"] == pytest.approx(4 / 6) and r["image_to_text_R@2"] == 1.0
    assert r["text_to_image_R@1"] == pytest.approx(5 / 6)  # caption 0 finds image 1 first
    # repeated captions: images sharing a caption all count as right answers
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=-1)
    caps = ["a cat", "a cat", "a dog", "a dog"]
    txt = F.normalize(torch.tensor([[1.0, 0.05], [1.0, 0.05], [0.05, 1.0], [0.05, 1.0]]), dim=-1)
    r = retrieval_recall(img, txt, caps, ks=(1,))
    assert r["image_to_text_R@1"] == 1.0 and r["text_to_image_R@1"] == 1.0 and r["distinct_captions"] == 2


def test_zero_shot_classifier_uses_open_clip_builder():
    import open_clip
    cfg = named_config("micro")
    model = ClipModel(cfg).eval()
    tok = open_clip.get_tokenizer("ViT-B-32", context_length=cfg.context_length)
    weights = classifier(model, tok, FASHION_CLASSES, "simple")
    assert weights.shape == (cfg.embed_dim, 10)
    torch.testing.assert_close(weights.norm(dim=0), torch.ones(10))
    # the same as averaging the normalised template embeddings by hand
    with torch.no_grad():
        texts = [t("bag") for t in templates("simple")]
        by_hand = F.normalize(model.encode_text(tok(texts), normalize=True).mean(0), dim=-1)
    torch.testing.assert_close(weights[:, 8], by_hand, atol=1e-5, rtol=1e-4)
    hits = topk_correct(weights.T[[3, 8]], weights, torch.tensor([3, 8]), ks=(1, 5))
    assert float(hits[1]) == 2.0
    assert len(templates("openai")) == 80 and templates(["a {} here"]) == ["a {} here"]
    # open_clip's own template list (callables), alone or mixed with strings, gives the same classifier
    own = classifier(model, tok, FASHION_CLASSES, list(open_clip.SIMPLE_IMAGENET_TEMPLATES))
    torch.testing.assert_close(own, weights)
    mixed = templates(["a {} here", open_clip.SIMPLE_IMAGENET_TEMPLATES[0]])
    assert [t("bag") for t in mixed] == ["a bag here", open_clip.SIMPLE_IMAGENET_TEMPLATES[0]("bag")]
    with pytest.raises(ConfigError, match="zero-shot templates must be"):
        templates(["no placeholder"])


def test_linear_probe_learns_a_linearly_encoded_mask():
    """Tokens that linearly encode a per-patch mask: the probe recovers it (mIoU near 1)."""
    gen = torch.Generator().manual_seed(0)
    n, grid, width = 96, (4, 4), 8
    masks = (torch.rand(n, *grid, generator=gen) > 0.5).long()
    tokens = torch.randn(n, 16, width, generator=gen) * 0.1
    tokens[..., 0] += masks.flatten(1).float() * 2 - 1
    spec = HeadSpec("seg", "segmentation", "seg.png", channels=2)
    labels = masks.repeat_interleave(4, 1).repeat_interleave(4, 2)  # (n, 16, 16): each patch 4x4 pixels
    head = train_probe(spec, tokens[:64], labels[:64], torch.ones(64), grid, 16, epochs=40, lr=1e-2)
    metrics = score_probe(spec, head, tokens[64:], labels[64:], torch.ones(32), grid, 16)
    assert metrics["seg_miou"] > 0.9
    # up=4: a token predicts its 4x4 block directly
    up = HeadSpec("seg", "segmentation", "seg.png", channels=2, up=4)
    head = train_probe(up, tokens[:64], labels[:64], torch.ones(64), grid, 16, epochs=40, lr=1e-2)
    assert score_probe(up, head, tokens[64:], labels[64:], torch.ones(32), grid, 16)["seg_miou"] > 0.9


def test_semantic_target_and_delta1():
    seg = torch.tensor([[[0, 1], [1, 255]]])
    assert semantic_target(seg, torch.tensor([4])).tolist() == [[[0, 5], [5, 255]]]
    hit, count = delta1_sums(torch.tensor([1.0, 1.2, 2.0, 5.0]), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert (hit, count) == (2.0, 3.0)
