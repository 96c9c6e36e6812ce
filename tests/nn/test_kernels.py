"""The kernel choice (corefm.nn.kernels): per device under auto, forced from a recipe, never a CPU op on CUDA."""

import pytest
import torch

from corefm.nn import attention, kernels
from corefm.nn.kernels import cpu_attention, cpu_linear
from projects.openelm.config import OpenELMConfig
from projects.openelm.model import OpenELM
from tests.stand_in_device import stand_in_cuda, to_stand_in


def _qkv(t: int, dtype: torch.dtype, device: str = "cpu", hq: int = 8, hk: int = 2):
    q = torch.randn(2, hq, t, 16, device=device).to(dtype)
    k, v = (torch.randn(2, hk, t, 16, device=device).to(dtype) for _ in range(2))
    return q, k, v


def _tiny_lm() -> OpenELM:
    cfg = OpenELMConfig(num_transformer_layers=2, model_dim=64, head_dim=16, num_gqa_groups=2, vocab_size=97,
                        max_context_length=64, qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 2.0))
    return OpenELM(cfg).to(torch.bfloat16)


def test_auto_on_cpu_routes_short_bf16_and_single_queries_to_the_cpu_kernels(monkeypatch):
    q, k, v = _qkv(16, torch.bfloat16)
    assert kernels.attention_kernel(q, k, is_causal=True) == "dense"
    assert kernels.attention_kernel(q.float(), k.float(), is_causal=True) == "sdpa"  # fp32: torch's kernel wins
    assert kernels.attention_kernel(q[:, :, :1], k, is_causal=False) == "single_query"
    monkeypatch.setattr(cpu_attention, "DENSE_MAX_SCORES", 2 * 8 * 16 * 16 - 1)
    assert kernels.attention_kernel(q, k, is_causal=True) == "sdpa"  # too many scores: fused kernel bounds memory


def test_forced_choices_and_the_dense_kernel_agree_with_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "dense_attention", lambda *a, **kw: calls.append(kw) or cpu_attention.dense_attention(*a, **kw))
    q, k, v = _qkv(16, torch.bfloat16)
    with kernels.selected(attention="sdpa"):
        assert kernels.attention_kernel(q, k, is_causal=True) == "sdpa"
        reference = attention.sdpa(q.float(), k.float(), v.float(), is_causal=True)
    assert calls == []
    with kernels.selected(attention="dense"):
        assert kernels.attention_kernel(q.float(), k.float(), is_causal=True) == "dense"
        dense = attention.sdpa(q.float(), k.float(), v.float(), is_causal=True)
    assert calls == [{"causal": True}]
    torch.testing.assert_close(dense, reference, rtol=2e-5, atol=2e-5)
    assert kernels.current() == kernels.KernelChoice()  # restored on exit


def test_bad_choices_are_refused():
    with pytest.raises(ValueError, match="not one of auto, sdpa, dense"):
        kernels.KernelChoice(attention="flash")
    with pytest.raises(ValueError, match="needs a CPU|runs oneDNN's CPU kernels"):
        kernels.KernelChoice(linear="packed").check_device(torch.device("cuda", 0))
    kernels.KernelChoice(linear="packed").check_device(torch.device("cpu"))


def test_plain_linear_choice_switches_packing_off_on_cpu():
    model = _tiny_lm().eval()
    with model.decoding():
        assert cpu_linear._ACTIVE  # auto on CPU: packed
    with kernels.selected(linear="plain"), model.decoding():
        assert not cpu_linear._ACTIVE


def test_auto_on_a_cuda_device_runs_sdpa_and_no_private_cpu_op(monkeypatch):
    """A decoder's training forward and KV-cached generate on a (stand-in) CUDA device under auto."""
    dense_calls = []
    monkeypatch.setattr(kernels, "dense_attention", lambda *a, **kw: dense_calls.append(1))
    monkeypatch.setattr(kernels, "single_query_attention", lambda *a, **kw: dense_calls.append(1))
    model = _tiny_lm()
    with stand_in_cuda() as rec:
        to_stand_in(model)
        q, k, _ = _qkv(16, torch.bfloat16, device="cuda")
        assert kernels.attention_kernel(q, k, is_causal=True) == "sdpa"
        assert kernels.attention_kernel(q[:, :, :1], k, is_causal=False) == "sdpa"
        rec.clear()
        ids = torch.randint(0, 97, (2, 8), device="cuda")
        assert model(ids).device.type == "cuda"
        out = model.eval().generate(ids, 3)
        assert out.shape == (2, 11) and out.device.type == "cuda"
        assert not cpu_linear._ACTIVE
    assert dense_calls == []
    assert not [op for op in rec.ops if "mkldnn" in op]
    assert rec.cpu_outputs == []


def test_packed_linear_forced_on_a_cuda_device_fails_loudly():
    model = _tiny_lm()
    with stand_in_cuda():
        to_stand_in(model)
        with kernels.selected(linear="packed"), pytest.raises(ValueError, match="oneDNN's CPU kernels"):
            with model.decoding():
                pass
