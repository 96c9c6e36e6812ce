"""Packed-weight decoding: F.linear's results (bit-identical in bf16), only inside the block, never stale."""

import pytest
import torch
import torch.nn.functional as F

from corefm.nn.kernels import cpu_linear
from corefm.nn.kernels.cpu_linear import Linear, can_pack, linear, packed_weights
from projects.openelm.config import OpenELMConfig
from projects.openelm.model import OpenELM

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("shape", [(1, 32), (8, 1, 32), (2, 5, 32)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_packed_linear_matches_f_linear(shape, bias, dtype):
    layer = Linear(32, 48, bias=bias).to(dtype)
    x = torch.randn(*shape).to(dtype)
    with torch.no_grad(), packed_weights([layer.weight]):
        assert id(layer.weight) in cpu_linear._ACTIVE
        out = layer(x)
    assert not cpu_linear._ACTIVE  # freed on exit
    assert out.shape == (*shape[:-1], 48)
    if dtype == torch.bfloat16:
        assert torch.equal(out, F.linear(x, layer.weight, layer.bias))  # bit-identical
    else:
        torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_packing_is_skipped_where_it_would_change_results_or_gradients(monkeypatch):
    assert not can_pack(Linear(16, 16).half().weight)  # fp16: not measured here, so left on F.linear
    layer = Linear(16, 16).to(torch.bfloat16)
    x = torch.randn(3, 16).to(torch.bfloat16)
    calls = []
    original = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or original(*a))
    with packed_weights([layer.weight]):
        # A grad-enabled forward (training while the block is open) takes F.linear and gets gradients.
        layer(x).float().sum().backward()
        assert layer.weight.grad is not None and calls == []
        with torch.no_grad():
            linear(x, layer.weight)
    assert calls == [1]
    with torch.no_grad():
        layer(x)  # outside the block
    assert calls == [1]


def test_generate_sees_weights_changed_by_a_fused_adamw_step():
    """A fused AdamW step does not bump the weights' version counter: copies must not outlive a block."""
    torch.manual_seed(0)
    cfg = OpenELMConfig(num_transformer_layers=2, model_dim=64, head_dim=16, num_gqa_groups=2, vocab_size=97,
                        max_context_length=64, qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 2.0))
    model = OpenELM(cfg).to(torch.bfloat16)
    prompt = torch.randint(0, 97, (2, 5))
    model.eval().generate(prompt, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.5, fused=True)
    model.train()
    model(prompt).float().square().mean().backward()
    opt.step()
    model.eval()
    expected = prompt
    with torch.no_grad():  # greedy decoding by full recompute with plain F.linear
        for _ in range(4):
            nxt = model(expected)[:, -1].float().argmax(-1)
            expected = torch.cat([expected, nxt[:, None]], dim=1)
    assert torch.equal(model.generate(prompt, 4), expected)
