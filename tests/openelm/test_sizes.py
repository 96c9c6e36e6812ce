"""OpenELM layer-wise scaling and parameter counts of the four published sizes (meta device)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from corefm.errors import ConfigError
from corefm.train.config import load_recipe
from projects.openelm.config import (OpenELMConfig, layer_specs, linspace, make_divisible, named_config,
                                     openelm_1_1b, openelm_3b, openelm_270m, openelm_450m, tiny)
from projects.openelm.model import OpenELM
from ._formulas import expected_widths

# The recipes that train an OpenELM from scratch (instruct_*.yaml fine-tune a release: tests/openelm/test_instruct.py)
RECIPES = [p for p in sorted((Path(__file__).resolve().parents[2] / "projects/openelm/configs").glob("*.yaml"))
           if yaml.safe_load(p.read_text())["model"]["name"] == "openelm"]

# DESIGN.md §3: (query heads first -> last, FFN width first -> last) and the parameter counts in
# millions with CoreNet's padded vocabulary (32,128) and the HF port's (32,000).
PUBLISHED = {
    "openelm_270m": ((12, 20), (768, 5120), 271.7, 271.5),
    "openelm_450m": ((12, 24), (768, 6144), 457.4, 457.2),
    "openelm_1_1b": ((16, 32), (1024, 8192), 1080.2, 1079.9),
    "openelm_3b": ((12, 24), (1536, 12288), 3037.0, 3036.7),
}


def meta_model(cfg: OpenELMConfig) -> OpenELM:
    with torch.device("meta"):
        return OpenELM(cfg)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_layer_widths_follow_the_formulas_and_published_ranges(name):
    cfg = named_config(name)
    specs = layer_specs(cfg)
    n_q, n_kv, ffn = expected_widths(cfg.num_transformer_layers, cfg.model_dim, cfg.head_dim)
    assert [s.num_heads for s in specs] == n_q
    assert [s.num_kv_heads for s in specs] == n_kv
    assert [s.ffn_dim for s in specs] == ffn
    (q0, q1), (f0, f1), _, _ = PUBLISHED[name]
    assert (n_q[0], n_q[-1]) == (q0, q1) and (n_kv[0], n_kv[-1]) == (q0 // 4, q1 // 4)
    assert (ffn[0], ffn[-1]) == (f0, f1)
    assert all(a <= b for a, b in zip(n_q, n_q[1:])) and all(a <= b for a, b in zip(ffn, ffn[1:]))
    assert all(s.head_dim == cfg.head_dim for s in specs) and all(f % 256 == 0 for f in ffn)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_counts_match_the_paper(name):
    _, _, padded, hf = PUBLISHED[name]
    for vocab, want in ((32128, padded), (32000, hf)):
        model = meta_model(named_config(name, vocab_size=vocab))
        got = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(got - want) / want < 1e-3, f"{name} vocab {vocab}: {got:.1f}M, paper {want}M"
        assert model.lm_head is None  # tied: the logits reuse token_embeddings


def test_named_size_functions_and_untied_head():
    assert [f().num_transformer_layers for f in (openelm_270m, openelm_450m, openelm_1_1b, openelm_3b)] == \
        [16, 20, 28, 36]
    assert openelm_3b().head_dim == 128 and tiny(vocab_size=100).vocab_size == 100
    tied = sum(p.numel() for p in meta_model(openelm_270m()).parameters())
    untied = sum(p.numel() for p in meta_model(openelm_270m(share_input_output_layers=False)).parameters())
    assert untied - tied == 32000 * 1280
    with pytest.raises(ConfigError, match="unknown OpenELM size"):
        named_config("openelm_7b")


def test_make_divisible_and_linspace():
    assert make_divisible(640, 256) == 768  # 640 + 128 rounds up
    assert make_divisible(100, 256) == 256  # never below the divisor
    assert make_divisible(1000, 64) == 1024
    assert make_divisible(95, 100) == 100
    assert make_divisible(1130, 1000) == 2000  # rounding down would lose > 10%: one divisor is added
    assert make_divisible(1110, 1000) == 1000  # exactly 0.9 * 1110 = 999 < 1000: kept
    assert make_divisible(1900, 1000) == 2000
    for start, stop, n in ((0.5, 1.0, 16), (0.5, 4.0, 36), (0.1, 0.7, 7), (1.0, 1.0, 3), (0.5, 4.0, 1)):
        assert linspace(start, stop, n) == [float(v) for v in np.linspace(start, stop, n)]


def test_multiplier_forms_and_bad_lengths():
    uniform = layer_specs(OpenELMConfig(num_transformer_layers=3, qkv_multipliers=1.0, ffn_multipliers=4.0))
    assert {(s.num_heads, s.ffn_dim) for s in uniform} == {(20, 5120)}
    explicit = OpenELMConfig(num_transformer_layers=3, qkv_multipliers=(0.5, 0.5, 1.0), ffn_multipliers=(1, 2, 3))
    assert [s.num_heads for s in layer_specs(explicit)] == [12, 12, 20]
    with pytest.raises(ConfigError, match="qkv_multipliers"):
        OpenELMConfig(num_transformer_layers=4, qkv_multipliers=(0.5, 0.7, 1.0))
    with pytest.raises(ConfigError, match="head_dim must be even"):
        OpenELMConfig(head_dim=63)


def test_paper_init_statistics():
    cfg = named_config("demo")
    torch.manual_seed(0)
    model = OpenELM(cfg)
    d, layers = cfg.model_dim, cfg.num_transformer_layers
    last = model.layers[-1]
    assert last.attn.qkv_proj.weight.std().item() == pytest.approx(d**-0.5, rel=0.05)
    assert last.ffn.proj_1.weight.std().item() == pytest.approx(d**-0.5, rel=0.05)
    residual = d**-0.5 * (2 * layers) ** -0.5
    assert last.attn.out_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert last.ffn.proj_2.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.token_embeddings.weight.std().item() == pytest.approx(d**-0.5, rel=0.05)
    assert torch.all(last.attn.q_norm.weight == 1) and torch.all(model.norm.weight == 1)
    fixed = OpenELM(named_config("demo", init="normal", init_std=0.01))
    assert fixed.layers[0].attn.qkv_proj.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert fixed.layers[0].ffn.proj_2.weight.std().item() == pytest.approx(0.01 * (2 * layers) ** -0.5, rel=0.05)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = OpenELM(tiny()).train()
    ckpt = OpenELM(tiny(activation_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 512, (2, 12))
    for m in (plain, ckpt):
        m(ids).logsumexp(-1).mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_generate_with_cache_matches_full_recompute():
    torch.manual_seed(0)
    model = OpenELM(tiny()).eval()
    prompt = torch.randint(0, 512, (2, 5))
    out = model.generate(prompt, 12)
    seq = prompt
    with torch.no_grad():
        for _ in range(12):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_model_sections_build(path):
    recipe = load_recipe(path)  # the whole recipe parses: preset, then the keys it writes
    assert recipe.model_name == "openelm"
    cfg = recipe.model
    model = meta_model(cfg)
    size = path.stem.removeprefix("openelm_") if path.stem.startswith("openelm_") else None
    if size:  # the paper recipes name their size's preset
        assert yaml.safe_load(path.read_text())["model"]["preset"] == f"openelm_{size}"
        assert replace(cfg, activation_checkpointing=False) == named_config(f"openelm_{size}")
        assert recipe.checkpoint.keep_last >= 5  # `corefm openelm average` takes the last 5 by default
    assert sum(p.numel() for p in model.parameters()) > 0
