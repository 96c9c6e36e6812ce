"""Generic tasks: losses match their formulas, padding is ignored, eval sums reduce to metrics."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corefm.tasks.causal_lm import CausalLMConfig, CausalLMTask
from corefm.tasks.classification import ClassificationConfig, ClassificationTask
from corefm.data.errors import SkipSample


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
