import pytest
import torch
import torch.nn.functional as F

from corefm.nn import GELUMLP, RMSNorm, SwiGLU, build_mlp, build_norm

from ._reference import naive_rms


def test_rms_norm_matches_formula():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6)
    torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    x = torch.randn(3, 5, 16) * 3 + 1
    torch.testing.assert_close(norm(x), naive_rms(x, norm.weight, 1e-6), atol=1e-6, rtol=1e-6)


def test_rms_norm_low_precision_uses_float32_statistic():
    torch.manual_seed(0)
    norm = RMSNorm(64).to(torch.bfloat16)
    x = (torch.randn(4, 64) * 100).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    expected = naive_rms(x.float(), torch.ones(64), 1e-6).to(torch.bfloat16)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_build_norm():
    assert isinstance(build_norm("rms_norm", 8, 1e-6), RMSNorm)
    ln = build_norm("layer_norm", 8, 1e-5)
    assert isinstance(ln, torch.nn.LayerNorm) and ln.eps == 1e-5
    with pytest.raises(ValueError, match="rms_norm, layer_norm"):
        build_norm("batch_norm", 8, 1e-5)


def test_swiglu_matches_openelm_layout():
    torch.manual_seed(1)
    mlp = SwiGLU(8, 12)
    assert mlp.proj_1.weight.shape == (24, 8) and mlp.proj_2.weight.shape == (8, 12)
    assert mlp.proj_1.bias is None
    x = torch.randn(2, 3, 8)
    w1 = mlp.proj_1.weight
    gate, up = x @ w1[:12].T, x @ w1[12:].T  # first half gates, second half is the up path
    expected = (gate * torch.sigmoid(gate) * up) @ mlp.proj_2.weight.T
    torch.testing.assert_close(mlp(x), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_gelu_mlp_matches_formula(act):
    torch.manual_seed(2)
    mlp = build_mlp(act, 8, 32, bias=True)
    assert isinstance(mlp, GELUMLP)
    x = torch.randn(4, 8)
    h = x @ mlp.fc1.weight.T + mlp.fc1.bias
    h = F.gelu(h) if act == "gelu" else h * torch.sigmoid(1.702 * h)
    torch.testing.assert_close(mlp(x), h @ mlp.fc2.weight.T + mlp.fc2.bias, atol=1e-6, rtol=1e-5)


def test_build_mlp():
    assert isinstance(build_mlp("swiglu", 8, 16, bias=False), SwiGLU)
    with pytest.raises(ValueError, match="swiglu, gelu"):
        build_mlp("relu", 8, 16, bias=False)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_float32_batchnorm_matches_torch_and_takes_bf16_weights(momentum):
    from corefm.nn.norms import BatchNorm2d

    torch.manual_seed(0)
    ours, ref = BatchNorm2d(8, momentum=momentum), torch.nn.BatchNorm2d(8, momentum=momentum)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 8, 5, 5)
    for train in (True, True, False):
        ours.train(train)
        ref.train(train)
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, atol=1e-6, rtol=1e-6)
    # DeepSpeed's bf16 mode: bf16 weights and input, fp32 running statistics (a plain BatchNorm refuses)
    ours.weight.data, ours.bias.data = ours.weight.data.bfloat16(), ours.bias.data.bfloat16()
    ours.train()
    y = ours(x.bfloat16())
    assert y.dtype == torch.bfloat16 and ours.running_mean.dtype == torch.float32
    with pytest.raises(RuntimeError):
        ref.to(torch.bfloat16).running_mean.data = ref.running_mean.float()
        ref.train()(x.bfloat16())
