import pytest
import torch

from corefm.nn import DecoderLM, KVCache, LayerSpec

VOCAB = 97
SPECS = [
    LayerSpec(num_heads=4, num_kv_heads=1, head_dim=8, ffn_dim=48),
    dict(num_heads=6, num_kv_heads=2, head_dim=8, ffn_dim=64),  # per-layer widths differ
    LayerSpec(num_heads=8, num_kv_heads=2, head_dim=8, ffn_dim=96),
]


def _model(**kwargs) -> DecoderLM:
    torch.manual_seed(0)
    model = DecoderLM(VOCAB, 32, SPECS, max_len=8, **kwargs).eval()  # max_len < T: rope grows lazily
    for name, p in model.named_parameters():  # non-trivial norm weights so every norm matters
        if name.endswith("norm.weight"):
            torch.nn.init.uniform_(p, 0.5, 1.5)
    return model


def _incremental(model, ids, prompt_len, mask=None, positions=None):
    cache = model.new_kv_cache()
    kw = lambda s, e: dict(  # noqa: E731
        key_padding_mask=None if mask is None else mask[:, :e],
        positions=None if positions is None else positions[:, s:e],
    )
    chunks = [model(ids[:, :prompt_len], kv_cache=cache, **kw(0, prompt_len))]
    for t in range(prompt_len, ids.shape[1]):
        chunks.append(model(ids[:, t : t + 1], kv_cache=cache, **kw(t, t + 1)))
    assert cache.seq_len == ids.shape[1]
    return torch.cat(chunks, dim=1)


def test_cached_decoding_equals_full_sequence():
    model = _model()
    ids = torch.randint(0, VOCAB, (2, 14), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        steps = _incremental(model, ids, prompt_len=5)
    assert full.shape == (2, 14, VOCAB)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_cached_decoding_with_left_padding():
    model = _model(tie_embeddings=False)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :3] = False  # sample 1 is left-padded by 3
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        full = model(ids, key_padding_mask=mask, positions=positions)
        steps = _incremental(model, ids, prompt_len=6, mask=mask, positions=positions)
        alone = model(ids[1:, 3:])  # the unpadded sample on its own
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full[1:, 3:], alone, atol=1e-5, rtol=1e-5)


def test_openelm_module_names():
    tied = set(_model().state_dict())
    expected = {"token_embeddings.weight", "norm.weight"}
    for i in range(len(SPECS)):
        expected |= {
            f"layers.{i}.{n}.weight"
            for n in ("attn_norm", "attn.qkv_proj", "attn.q_norm", "attn.k_norm", "attn.out_proj",
                      "ffn_norm", "ffn.proj_1", "ffn.proj_2")
        }
    assert tied == expected
    assert set(_model(tie_embeddings=False).state_dict()) == expected | {"lm_head.weight"}
    qkv = _model().layers[1].attn.qkv_proj.weight
    assert qkv.shape == ((6 + 2 * 2) * 8, 32)


def _make_divisible(v: float, m: int) -> int:
    n = max(m, int(v + m / 2) // m * m)
    return n + m if n < 0.9 * v else n


def _openelm_specs(layers: int, dim: int, head_dim: int, group: int = 4) -> list[LayerSpec]:
    specs = []
    for i in range(layers):
        alpha = round(0.5 + 0.5 * i / (layers - 1), 2)
        beta = round(0.5 + 3.5 * i / (layers - 1), 2)
        n_q = _make_divisible(dim * alpha, head_dim * group) // head_dim
        specs.append(LayerSpec(n_q, n_q // group, head_dim, _make_divisible(beta * dim, 256)))
    return specs


def test_openelm_parameter_counts():
    # Published counts with the HF port's 32,000-token vocabulary (DESIGN.md section 3).
    for (layers, dim, head_dim), millions in {(16, 1280, 64): 271.5, (36, 3072, 128): 3036.7}.items():
        specs = _openelm_specs(layers, dim, head_dim)
        with torch.device("meta"):
            model = DecoderLM(32000, dim, specs)
        # The paper rounds to 0.1M; the exact counts are 271,527,168 and 3,036,647,424.
        assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - millions) < 0.06
    specs = _openelm_specs(16, 1280, 64)
    assert (specs[0].num_heads, specs[-1].num_heads, specs[0].ffn_dim, specs[-1].ffn_dim) == (12, 20, 768, 5120)


def test_gradient_checkpointing_same_gradients():
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    grads = []
    for ckpt in (False, True):
        model = _model().train()
        model.gradient_checkpointing = ckpt
        model(ids).logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_kv_cache_object():
    cache = KVCache()
    k = torch.randn(2, 3, 4, 8)
    k_all, _ = cache.append(1, k, k)
    assert cache.seq_len == 0 and cache.layer_len(1) == 4 and k_all is k
    k_all, v_all = cache.append(1, k[:, :, :1], k[:, :, :1])
    assert k_all.shape == (2, 3, 5, 8) and torch.equal(v_all[:, :, 4], k[:, :, 0])
    with pytest.raises(ValueError, match="cannot append"):
        cache.append(1, torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8))
    with pytest.raises(ValueError, match="out of range"):
        KVCache(num_layers=2).append(2, k, k)
