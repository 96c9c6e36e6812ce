"""OpenELM in Hugging Face format, both ways: export, Auto classes, trust_remote_code, generate, load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

import projects.openelm  # noqa: F401  (registers "openelm" with the Auto classes)
from corefm.errors import CheckpointError
from projects.openelm.config import openelm_270m, tiny
from projects.openelm.convert import from_hf_config, load_hf, save_hf
from projects.openelm.hf import OpenELMConfig as HFOpenELMConfig
from projects.openelm.hf import OpenELMForCausalLM
from projects.openelm.model import OpenELM
from ._apple_reference import apple_logits
from ._formulas import expected_widths

VOCAB = 512


def make(tmp_path, name="model", **overrides):
    torch.manual_seed(0)
    cfg = tiny(**overrides)
    model = OpenELM(cfg).eval()
    # Non-trivial norm weights, so a norm applied to the wrong tensor cannot go unnoticed.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    save_hf(model, cfg, tmp_path / name)
    return model, cfg, tmp_path / name


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return make(tmp_path_factory.mktemp("hf"))


def ids(b=2, t=24, seed=0):
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tied", [True, False])
def test_auto_class_logits_equal_corefm(tmp_path, tied):
    model, _, folder = make(tmp_path, share_input_output_layers=tied)
    assert isinstance(AutoConfig.from_pretrained(folder), HFOpenELMConfig)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert isinstance(hf, OpenELMForCausalLM) and (hf.lm_head is None) == tied
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-5, rtol=0)
    keys = set(load_file(str(folder / "model.safetensors")))
    assert ("lm_head.weight" in keys) != tied
    assert "transformer.layers.3.attn.qkv_proj.weight" in keys and "transformer.norm.weight" in keys


def test_corefm_computes_what_apples_port_defines(exported):
    model, _, folder = exported
    hf_cfg = AutoConfig.from_pretrained(folder)
    state = load_file(str(folder / "model.safetensors"))
    x = ids(t=17)
    with torch.no_grad():
        torch.testing.assert_close(model(x).double(), apple_logits(state, hf_cfg, x), atol=1e-4, rtol=0)


def test_trust_remote_code_in_a_fresh_process_without_corefm(exported, tmp_path):
    model, _, folder = exported
    release = tmp_path / "release"
    shutil.copytree(folder, release)
    x = ids()
    torch.save(x, tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(release)!r}, trust_remote_code=True).eval()
        x = torch.load({str(tmp_path / "ids.pt")!r})
        with torch.no_grad():
            logits = m(x).logits
        gen = m.generate(x[:, :4], attention_mask=torch.ones_like(x[:, :4]), max_new_tokens=8,
                         do_sample=False, pad_token_id=0)
        mods = sorted(k for k in sys.modules if k.split(".")[0] in ("projects", "corefm"))
        torch.save({{"logits": logits, "gen": gen, "mods": mods, "cls": type(m).__module__}},
                   {str(tmp_path / "out.pt")!r})
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["mods"] == [] and out["cls"].startswith("transformers_modules.")
    with torch.no_grad():
        torch.testing.assert_close(out["logits"], model(x), atol=1e-5, rtol=0)
    assert torch.equal(out["gen"], model.generate(x[:, :4], 8))


def test_generate_with_kv_cache_equals_without(exported):
    model, _, folder = exported
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    lengths = []
    hook = hf.transformer.register_forward_pre_hook(lambda m, args, kw: lengths.append(kw["input_ids"].shape[1]),
                                                    with_kwargs=True)
    prompt = ids(t=6, seed=3)
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=20, min_new_tokens=20, do_sample=False,
              pad_token_id=0)
    cached = hf.generate(prompt, use_cache=True, **kw)
    assert lengths[0] == 6 and set(lengths[1:]) == {1}  # the cache really fed one token per step
    lengths.clear()
    uncached = hf.generate(prompt, use_cache=False, **kw)
    assert lengths == list(range(6, 26))  # and without it the whole sequence is recomputed
    hook.remove()
    assert cached.shape == (2, 26) and torch.equal(cached, uncached)
    assert torch.equal(cached, model.generate(prompt, 20))


def test_left_padded_batch_generates_like_single_rows(exported):
    _, _, folder = exported
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    short, long = ids(1, 3, seed=5), ids(1, 7, seed=6)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = torch.cat([torch.cat([torch.zeros(1, 4), torch.ones(1, 3)], 1), torch.ones(1, 7)]).long()
    kw = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)
    out = hf.generate(batch, attention_mask=mask, **kw)
    for row, single in ((0, short), (1, long)):
        alone = hf.generate(single, attention_mask=torch.ones_like(single), **kw)
        assert torch.equal(out[row, -10:], alone[0, -10:])


def test_labels_give_next_token_cross_entropy(exported):
    _, _, folder = exported
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    x = ids()
    labels = x.clone()
    labels[:, :5] = -100
    with torch.no_grad():
        out = hf(x, labels=labels)
    want = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, want)


def test_load_hf_round_trip_for_continued_training(exported, tmp_path):
    model, cfg, folder = exported
    loaded, loaded_cfg = load_hf(folder)
    assert loaded_cfg == cfg
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(p.requires_grad and p.dtype == torch.float32 and p.device.type == "cpu" for p in loaded.parameters())
    # A bf16 release reads back as fp32 master weights holding the bf16 values.
    save_hf(model, cfg, tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((tmp_path / "bf16/config.json").read_text())["dtype"] == "bfloat16"
    half, _ = load_hf(tmp_path / "bf16")
    w = model.layers[0].attn.qkv_proj.weight
    assert torch.equal(half.layers[0].attn.qkv_proj.weight, w.to(torch.bfloat16).float())


def test_load_hf_reads_apples_sharded_layout(exported, tmp_path):
    model, cfg, folder = exported
    apple = tmp_path / "apple"
    apple.mkdir()
    raw = json.loads((folder / "config.json").read_text())
    for key in ("auto_map", "dtype", "rms_norm_eps"):  # Apple's config.json has none of these
        raw.pop(key)
    raw["torch_dtype"] = "float32"
    (apple / "config.json").write_text(json.dumps(raw))
    state = load_file(str(folder / "model.safetensors"))
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(apple / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (apple / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    loaded, loaded_cfg = load_hf(apple)
    assert loaded_cfg == cfg
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_apples_published_270m_config_maps_to_openelm_270m():
    # The layout of apple/OpenELM-270M's config.json: the per-layer lists are written out.
    ffn = [round(float(v), 2) for v in np.linspace(0.5, 4.0, 16)]
    heads, kv_heads, _ = expected_widths(16, 1280, 64)
    raw = {"activation_fn_name": "swish", "architectures": ["OpenELMForCausalLM"], "bos_token_id": 1,
           "eos_token_id": 2, "ffn_dim_divisor": 256, "ffn_multipliers": ffn, "ffn_with_glu": True, "head_dim": 64,
           "initializer_range": 0.02, "max_context_length": 2048, "model_dim": 1280, "model_type": "openelm",
           "normalization_layer_name": "rms_norm", "normalize_qk_projections": True, "num_gqa_groups": 4,
           "num_kv_heads": kv_heads, "num_query_heads": heads, "num_transformer_layers": 16,
           "qkv_multipliers": [0.5, 1.0], "rope_freq_constant": 10000, "rope_max_length": 4096,
           "share_input_output_layers": True, "torch_dtype": "float32", "transformers_version": "4.39.3",
           "use_cache": True, "vocab_size": 32000}
    assert from_hf_config(raw) == openelm_270m()
    hf = HFOpenELMConfig(**{k: v for k, v in raw.items() if k not in ("model_type", "transformers_version")})
    assert hf.num_query_heads == heads and hf.ffn_dims[0] == 768 and hf.ffn_dims[-1] == 5120


def test_mismatched_checkpoints_fail_with_one_clear_error(exported, tmp_path):
    _, _, folder = exported
    wrong = tmp_path / "wrong"
    shutil.copytree(folder, wrong)
    raw = json.loads((wrong / "config.json").read_text())
    raw["model_dim"] = 32
    (wrong / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"wrong shape .*transformer\.token_embeddings\.weight \(512, 64\)") as e:
        load_hf(wrong)
    assert "\n" not in str(e.value)
    raw["model_dim"], raw["num_transformer_layers"] = 64, 3
    raw["ffn_multipliers"] = [0.5, 4.0]
    (wrong / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"unexpected transformer\.layers\.3\.attn\.k_norm\.weight"):
        load_hf(wrong)
    state = load_file(str(folder / "model.safetensors"))
    del state["transformer.layers.1.ffn.proj_2.weight"]
    state["decoder.extra"] = torch.zeros(1)
    shutil.copyfile(folder / "config.json", wrong / "config.json")
    save_file(state, str(wrong / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) decoder\.extra"):
        load_hf(wrong)
    del state["decoder.extra"]
    save_file(state, str(wrong / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing transformer\.layers\.1\.ffn\.proj_2\.weight"):
        load_hf(wrong)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf(tmp_path)
    with pytest.raises(ValueError, match="num_query_heads"):
        HFOpenELMConfig(num_transformer_layers=2, model_dim=64, head_dim=16, qkv_multipliers=1.0,
                        num_query_heads=[4, 2])


def test_release_writer_makes_a_transformers_folder(exported, tmp_path):
    from corefm.hub.release import writer_for

    model, cfg, _ = exported
    run = tmp_path / "run"
    run.mkdir()
    recipe = {"model": {"name": "openelm", **{k: getattr(cfg, k) for k in ("num_transformer_layers", "model_dim",
                                                                          "head_dim", "num_gqa_groups",
                                                                          "ffn_dim_divisor", "vocab_size",
                                                                          "max_context_length", "rope_max_length")}},
              "task": {"name": "causal_lm"}, "train": {"micro_batch_size": 2}}
    (run / "recipe.json").write_text(json.dumps(recipe))
    (run / "final.json").write_text(json.dumps({"step": 3, "loss": 1.0, "eval": {"ppl": 9.5}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    files = writer_for("openelm")(run, tmp_path / "release", recipe)
    assert {f.name for f in files} >= {"config.json", "model.safetensors", "modeling_openelm.py", "README.md"}
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "release").eval()
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-5, rtol=0)
    assert "trust_remote_code=True" in (tmp_path / "release" / "README.md").read_text()


def test_chunked_prefill_through_the_cache_equals_one_pass(exported):
    from transformers import DynamicCache

    _, _, folder = exported
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    x = ids(t=20)
    with torch.no_grad():
        full = hf(x).logits
        cache = DynamicCache(config=hf.config)
        first = hf(x[:, :8], past_key_values=cache, use_cache=True).logits
        rest = hf(x[:, 8:], past_key_values=cache, use_cache=True).logits  # 12 new tokens after 8 cached
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-5, rtol=0)
