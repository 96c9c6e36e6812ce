"""Generic tasks: losses match their formulas, padding is ignored, eval sums reduce to metrics."""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corefm.tasks.causal_lm import CausalLMConfig, CausalLMTask
from corefm.tasks.classification import ClassificationConfig, ClassificationTask
from corefm.data.errors import SkipSample
from corefm.errors import ConfigError


def lm(vocab=11):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(vocab, 8), torch.nn.Linear(8, vocab))


def test_causal_lm_loss_is_next_token_ce_ignoring_padding():
    model = lm()
    task = CausalLMTask(CausalLMConfig(), model)
    tokens = torch.tensor([[1, 2, 3, 4, -1, -1], [5, 6, 7, 8, 9, 1]])
    out = task({"tokens": tokens})
    logits = model(tokens[:, :-1].clamp(min=0))
    targets = tokens[:, 1:]
    keep = targets >= 0
    want = F.cross_entropy(logits[keep], targets[keep])
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    assert out["num_tokens"].item() == 8
    # padding contents must not matter
    other = tokens.clone()
    other[0, 4:] = -7
    assert task({"tokens": other})["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)


def test_causal_lm_z_loss_and_eval_perplexity():
    model = lm()
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    plain = CausalLMTask(CausalLMConfig(), model)({"tokens": tokens})["loss"]
    task = CausalLMTask(CausalLMConfig(z_loss=1e-2), model)
    z = torch.logsumexp(model(tokens[:, :-1]).float(), -1).square().mean()
    assert task({"tokens": tokens})["loss"].item() == pytest.approx((plain + 1e-2 * z).item(), rel=1e-5)
    sums = {k: float(v) for k, v in task({"tokens": tokens}, mode="eval").items()}
    metrics = task.eval_metrics(sums)
    assert metrics["perplexity"] == pytest.approx(math.exp(plain.item()), rel=1e-5)


def test_causal_lm_transform_reads_npy_and_crops():
    task = CausalLMTask(CausalLMConfig(seq_len=3), lm())
    fn = task.sample_transform(train=True)
    out = fn({"__key__": "a", "tokens.npy": np.arange(10, dtype=np.int32)})
    assert out["tokens"].tolist() == [0, 1, 2, 3]
    with pytest.raises(SkipSample):
        fn({"__key__": "b", "txt": "no tokens"})


def _npy(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize("tokens,reason", [
    (np.arange(12, dtype=np.int64).reshape(3, 4), "must be a 1-D integer array, got 2-D int64"),
    (np.array([1.0, 2.0, -0.3, -0.3]), "must be a 1-D integer array, got 1-D float64"),
    (np.array([1, "a", None], dtype=object), "does not load without pickle"),
    (np.array([1, 2, 11, 3]), "token id 11 >= the model's vocabulary (11)"),
    (np.array([5]), "holds 1 token(s)"),
])
def test_causal_lm_skips_token_arrays_it_cannot_train_on(tokens, reason):
    from projects.openelm.config import OpenELMConfig
    from projects.openelm.model import OpenELM

    model = OpenELM(OpenELMConfig(num_transformer_layers=1, model_dim=32, head_dim=16, num_gqa_groups=1,
                                  vocab_size=11, max_context_length=16, qkv_multipliers=1.0, ffn_multipliers=1.0))
    fn = CausalLMTask(CausalLMConfig(), model).sample_transform(train=True)
    with pytest.raises(SkipSample, match=re.escape(reason)):
        fn({"__key__": "k", "tokens.npy": _npy(tokens)})
    assert fn({"__key__": "k", "tokens.npy": _npy(np.array([1, 2, -1], dtype=np.int16))})["tokens"].dtype == torch.int64


@pytest.mark.parametrize("label,reason", [(b"abc", "label b'abc' is not an integer"),
                                          (b"37", "label 37 is outside 0..9"), (b"-1", "label -1 is outside 0..9")])
def test_classification_skips_labels_outside_the_models_classes(label, reason):
    from projects.vit.model import ViTClassifier, ViTClassifierConfig

    model = ViTClassifier(ViTClassifierConfig(image_size=4, patch_size=2, in_chans=1, width=8, layers=1, heads=1))
    fn = ClassificationTask(ClassificationConfig(image_size=4, channels=1), model).sample_transform(train=False)
    with pytest.raises(SkipSample, match=re.escape(reason)):
        fn({"__key__": "k", "npy": np.zeros((4, 4), np.uint8), "cls": label})


def test_classification_transform_and_metrics():
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(buf, format="PNG")
    task = ClassificationTask(ClassificationConfig(image_size=4, channels=1), torch.nn.Identity())
    fn = task.sample_transform(train=False)
    out = fn({"__key__": "k", "png": buf.getvalue(), "cls": 3})
    assert out["image"].shape == (1, 4, 4) and torch.allclose(out["image"], torch.ones(1, 4, 4))
    assert out["label"].item() == 3
    with pytest.raises(SkipSample):
        fn({"__key__": "bad", "png": b"not a png", "cls": 1})
    with pytest.raises(SkipSample):
        fn({"__key__": "nolabel", "png": buf.getvalue()})
    assert task.eval_metrics({"correct": 3.0, "count": 4.0, "loss_sum": 2.0})["accuracy"] == 0.75


def test_classification_input_follows_the_model_and_a_contradiction_is_one_line():
    from corefm.train.build import build_task
    from corefm.train.config import parse_recipe

    model = {"name": "vit_classifier", "image_size": 8, "patch_size": 2, "in_chans": 1, "width": 16,
             "layers": 1, "heads": 2}
    task = build_task(parse_recipe({"model": model, "task": {"name": "classification"}}))
    assert (task.cfg.image_size, task.cfg.channels) == (8, 1)
    for key, value, model_key in (("image_size", 16, "image_size"), ("channels", 3, "in_chans")):
        with pytest.raises(ConfigError, match=rf"^task.{key} is {value} but model.{model_key} is \d: leave"):
            build_task(parse_recipe({"model": model, "task": {"name": "classification", key: value}}))
