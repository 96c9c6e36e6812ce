"""CoreNet OpenELM checkpoints -> transformers release folders and back (`corefm openelm convert`).

The CoreNet checkpoints here are written with CoreNet's own parameter names, spelled out below as
apple/corenet's corenet/modeling/models/language_modeling/general_gpt.py defines them
(GeneralGPTModel.token_embeddings / layers / norm / classifier; TransformerDecoderLayer.attn /
ffn / attn_norm / ffn_norm; MultiHeadCausalAttention.qkv_proj / q_norm / k_norm / out_proj;
FeedForwardNetwork.proj_1 / proj_2), and the logits are also checked against CoreNet's forward
pass written out from that file, so the test does not rely on the converter's own name table.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from corefm.cli import main
from corefm.errors import ConfigError
from projects.openelm.config import OpenELMConfig, layer_specs
from projects.openelm.convert import load_hf, save_hf
from projects.openelm.corenet import convert_from_corenet, convert_to_corenet, load_corenet, read_recipe
from projects.openelm.model import OpenELM

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 512

# CoreNet's "gpt-test" (gpt_configs in general_gpt.py) as a corefm config: 1 layer, d 128, one
# 64-wide head, GLU FFN 256, q/k norm, tied embeddings; vocab/context come from the recipe.
GPT_TEST = dict(num_transformer_layers=1, model_dim=128, head_dim=64, num_gqa_groups=1, qkv_multipliers=(0.25, 0.5),
                ffn_multipliers=(0.25, 0.75), ffn_dim_divisor=256, normalize_qk_projections=True,
                share_input_output_layers=True, rope_max_length=4096, vocab_size=VOCAB, max_context_length=256)
# A model CoreNet's table does not have (4 layers, layer-wise scaling, GQA groups of 2, untied
# output layer = CoreNet's `classifier`), passed to the Python API as an extra gpt_configs entry.
TINY_UNTIED = dict(num_transformer_layers=4, model_dim=64, head_dim=16, num_gqa_groups=2, ffn_dim_divisor=32,
                   qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 4.0), normalize_qk_projections=True,
                   share_input_output_layers=False)
TABLE = {"tiny-untied": TINY_UNTIED}

LAYER_NAMES = ("attn.qkv_proj.weight", "attn.q_norm.weight", "attn.k_norm.weight", "attn.out_proj.weight",
               "ffn.proj_1.weight", "ffn.proj_2.weight", "attn_norm.weight", "ffn_norm.weight")


def random_model(**fields) -> tuple[OpenELM, OpenELMConfig]:
    torch.manual_seed(0)
    cfg = OpenELMConfig(**fields)
    model = OpenELM(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights, so a norm read from the wrong key shows
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model, cfg


def corenet_state(model: OpenELM) -> dict[str, torch.Tensor]:
    """The model's weights under CoreNet's names (see the module docstring)."""
    sd = model.state_dict()
    out = {"token_embeddings.weight": model.token_embeddings.weight.detach().clone(),
           "norm.weight": model.norm.weight.detach().clone()}
    for i in range(model.cfg.num_transformer_layers):
        for name in LAYER_NAMES:
            out[f"layers.{i}.{name}"] = sd[f"layers.{i}.{name}"].clone()
    if not model.cfg.share_input_output_layers:
        out["classifier.weight"] = sd["lm_head.weight"].clone()
    return out


def corenet_logits(sd: dict[str, torch.Tensor], head_dim: int, ids: torch.Tensor) -> torch.Tensor:
    """GeneralGPTModel.forward on CoreNet-named weights, in float64 (RMSNorm eps 1e-6, RoPE theta 1e4)."""
    sd = {k: v.double() for k, v in sd.items()}
    b, t = ids.shape

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    inv = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    emb = torch.outer(torch.arange(t, dtype=torch.float64), inv).repeat(1, 2)
    cos, sin = emb.cos(), emb.sin()

    def rope(x):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    x = sd["token_embeddings.weight"][ids]
    i = 0
    while f"layers.{i}.attn.qkv_proj.weight" in sd:
        p = f"layers.{i}."
        nq = sd[p + "attn.out_proj.weight"].shape[1] // head_dim
        nkv = (sd[p + "attn.qkv_proj.weight"].shape[0] // head_dim - nq) // 2
        qkv = (rms(x, sd[p + "attn_norm.weight"]) @ sd[p + "attn.qkv_proj.weight"].T)
        q, k, v = qkv.reshape(b, t, nq + 2 * nkv, head_dim).transpose(1, 2).split([nq, nkv, nkv], dim=1)
        q, k = rope(rms(q, sd[p + "attn.q_norm.weight"])), rope(rms(k, sd[p + "attn.k_norm.weight"]))
        k, v = k.repeat_interleave(nq // nkv, dim=1), v.repeat_interleave(nq // nkv, dim=1)
        att = (q @ k.transpose(-1, -2) / math.sqrt(head_dim)).masked_fill(
            ~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(b, t, nq * head_dim) @ sd[p + "attn.out_proj.weight"].T
        y1, y2 = (rms(x, sd[p + "ffn_norm.weight"]) @ sd[p + "ffn.proj_1.weight"].T).chunk(2, dim=-1)
        x = x + (torch.nn.functional.silu(y1) * y2) @ sd[p + "ffn.proj_2.weight"].T
        i += 1
    x = rms(x, sd["norm.weight"])
    return x @ sd.get("classifier.weight", sd["token_embeddings.weight"]).T


def write_recipe(path: Path, model_name: str = "gpt-test", vocab: int | str = VOCAB, extra: str = "") -> Path:
    """A recipe shaped like CoreNet's projects/openelm/pretraining_configs/openelm_270M.yaml."""
    path.write_text(f"""\
taskname: '+ [converter test]'
_anchor_context_length: &_anchor_context_length 256
_anchor_vocab_size: &_anchor_vocab_size {vocab}
_anchor_padding_index: &_anchor_padding_index 500
text_tokenizer:
  name: "sentence_piece"
  sentence_piece:
    model_path: /data/llama/tokenizer.model
loss:
  category: "language_modeling"
  language_modeling:
    cross_entropy:
      ignore_index: *_anchor_padding_index
model:
  activation_checkpointing: false
  language_modeling:
    name: "general_gpt"
    general_gpt:
      model_name: "{model_name}"
      vocab_size: *_anchor_vocab_size
      max_context_length: *_anchor_context_length
      padding_index: *_anchor_padding_index
{extra}""")
    return path


def ids(b: int = 2, t: int = 19, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(1))


def corefm_cmd(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "corefm.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def plain_transformers_logits(folder: Path, x: torch.Tensor, tmp_path: Path) -> dict:
    """Logits of AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True) in a fresh process
    that never imports corefm (here, projects.openelm registers its classes, which would be used instead)."""
    torch.save(x, tmp_path / "ids.pt")
    script = (f"import sys, torch\nfrom transformers import AutoModelForCausalLM\n"
              f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()\n"
              f"with torch.no_grad(): logits = m(torch.load({str(tmp_path / 'ids.pt')!r})).logits\n"
              f"mods = sorted(k for k in sys.modules if k.split('.')[0] in ('projects', 'corefm'))\n"
              f"torch.save({{'logits': logits, 'mods': mods, 'cls': type(m).__module__, "
              f"'heads': m.config.num_query_heads}}, {str(tmp_path / 'out.pt')!r})\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert got["mods"] == [] and got["cls"].startswith("transformers_modules.")
    return got


@pytest.fixture(scope="module")
def gpt_test(tmp_path_factory):
    """(corefm model, CoreNet training checkpoint path, recipe path) for CoreNet's gpt-test."""
    tmp = tmp_path_factory.mktemp("corenet")
    model, _ = random_model(**GPT_TEST)
    ckpt = tmp / "training_checkpoint_last.pt"
    # CoreNet's get_training_state() layout (corenet/utils/checkpoint_utils.py)
    torch.save({"iterations": 7, "epoch": 0, "model_state_dict": corenet_state(model),
                "optim_state_dict": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
                "best_metric": 3.5, "is_interval_ckpt": True}, ckpt)
    return model, ckpt, write_recipe(tmp / "openelm_gpt_test.yaml")


def test_recipe_reads_corenets_general_gpt_keys(gpt_test):
    rec = read_recipe(gpt_test[2])
    assert (rec.model_name, rec.vocab_size, rec.max_context_length, rec.padding_index) == ("gpt-test", VOCAB, 256, 500)
    assert rec.tokenizer_path == "/data/llama/tokenizer.model"


def test_cli_converts_a_training_checkpoint_that_plain_transformers_loads(gpt_test, tmp_path, lm_tokenizer):
    model, ckpt, recipe = gpt_test
    out = tmp_path / "release"
    r = corefm_cmd("openelm", "convert", "--from-corenet", str(ckpt), "--config", str(recipe), "--out", str(out),
                   "--tokenizer", str(lm_tokenizer))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "gpt-test" in r.stdout and f"tokenizer: copied from {lm_tokenizer}" in r.stdout
    assert (out / "tokenizer.json").is_file() and (out / "modeling_openelm.py").is_file()
    x = ids()
    got = plain_transformers_logits(out, x, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(got["logits"], model(x), atol=1e-5, rtol=0)
    sd = torch.load(ckpt, weights_only=True)["model_state_dict"]
    torch.testing.assert_close(got["logits"].double(), corenet_logits(sd, 64, x), atol=1e-5, rtol=0)


def test_cli_says_when_no_tokenizer_is_given(gpt_test, tmp_path, capsys):
    _, ckpt, recipe = gpt_test
    assert main(["openelm", "convert", "--from-corenet", str(ckpt), "--config", str(recipe),
                 "--out", str(tmp_path / "r")]) == 0
    said = capsys.readouterr().out
    assert "tokenizer: none given" in said and "/data/llama/tokenizer.model" in said and "llama-tokenizer" in said
    assert not list((tmp_path / "r").glob("tokenizer*"))


@pytest.mark.parametrize("form", ["bare", "module", "training+module", "ema"])
def test_every_checkpoint_form_gives_the_same_release(gpt_test, tmp_path, form):
    model, _, recipe = gpt_test
    sd = corenet_state(model)
    if "module" in form:  # DistributedDataParallel's wrapper prefix
        sd = {f"module.{k}": v for k, v in sd.items()}
    obj = {"model_state_dict": {k: v * 0 for k, v in sd.items()}, "ema_state_dict": sd} if form == "ema" else \
        {"model_state_dict": sd, "iterations": 3} if form.startswith("training") else sd
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    convert_from_corenet(path, recipe, tmp_path / "out", ema=form == "ema")
    want = {f"transformer.{k}": v for k, v in model.state_dict().items()}
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_untied_multilayer_gqa_model_and_vocab_trim(tmp_path):
    model, _ = random_model(**TINY_UNTIED, vocab_size=VOCAB, max_context_length=256)
    sd = corenet_state(model)
    assert "classifier.weight" in sd and "layers.3.attn.k_norm.weight" in sd
    torch.save(sd, tmp_path / "checkpoint_last.pt")
    recipe = write_recipe(tmp_path / "r.yaml", model_name="tiny-untied")
    with pytest.raises(ConfigError, match="'tiny-untied' is not one of CoreNet's general_gpt configs"):
        load_corenet(tmp_path / "checkpoint_last.pt", recipe)
    convert_from_corenet(tmp_path / "checkpoint_last.pt", recipe, tmp_path / "out", models=TABLE)
    x = ids()
    got = plain_transformers_logits(tmp_path / "out", x, tmp_path)
    assert got["heads"] == [2, 4, 4, 4]  # make_divisible(64 * [0.5, 0.67, 0.83, 1.0], 32) / 16
    logits = got["logits"]
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits.double(), corenet_logits(sd, 16, x), atol=1e-5, rtol=0)
    # --vocab-size keeps the first rows: the logits of the kept tokens come from the same rows
    trimmed, cfg, _ = load_corenet(tmp_path / "checkpoint_last.pt", recipe, vocab_size=300, models=TABLE)
    assert cfg.vocab_size == 300 and trimmed.lm_head.weight.shape == (300, 64)
    with torch.no_grad():
        torch.testing.assert_close(trimmed(x % 300), model(x % 300)[..., :300], atol=0, rtol=0)
    # and back: CoreNet names again, classifier included, exactly
    _, _, name = convert_to_corenet(tmp_path / "out", tmp_path / "back.pt", tmp_path / "back.yaml", models=TABLE)
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert name == "tiny-untied" and back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_round_trip_corefm_corenet_corefm_is_exact(gpt_test, tmp_path, capsys):
    model, _, _ = gpt_test
    cfg = OpenELMConfig(**GPT_TEST)
    save_hf(model, cfg, tmp_path / "a")
    assert main(["openelm", "convert", "--to-corenet", str(tmp_path / "a"), "--out", str(tmp_path / "c.pt"),
                 "--config-out", str(tmp_path / "c.yaml")]) == 0
    assert "model_name 'gpt-test'" in capsys.readouterr().out
    back = torch.load(tmp_path / "c.pt", weights_only=True)
    assert sorted(back) == sorted(corenet_state(model))  # CoreNet's names, nothing else
    rec = read_recipe(tmp_path / "c.yaml")
    assert (rec.model_name, rec.vocab_size, rec.max_context_length) == ("gpt-test", VOCAB, 256)
    assert main(["openelm", "convert", "--from-corenet", str(tmp_path / "c.pt"), "--config", str(tmp_path / "c.yaml"),
                 "--out", str(tmp_path / "b")]) == 0
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert json.loads((tmp_path / "a" / "config.json").read_text()) == \
        json.loads((tmp_path / "b" / "config.json").read_text())
    # (load_hf reads a 1-layer config.json's per-layer multiplier lists back as 1-tuples: same widths)
    assert layer_specs(load_hf(tmp_path / "b")[1]) == layer_specs(cfg)


def test_to_corenet_recipe_needs_a_corenet_architecture(tmp_path):
    model, cfg = random_model(**TINY_UNTIED, vocab_size=VOCAB)
    save_hf(model, cfg, tmp_path / "a")
    with pytest.raises(ConfigError, match="no CoreNet general_gpt config has this architecture"):
        convert_to_corenet(tmp_path / "a", tmp_path / "c.pt", tmp_path / "c.yaml")
    assert not (tmp_path / "c.pt").exists()  # nothing half-written


def _bad_unknown(sd):
    sd["layers.0.attn.rotary.inv_freq"] = torch.zeros(32)


def _bad_missing(sd):
    del sd["layers.0.ffn.proj_2.weight"]


def _bad_shape(sd):
    sd["layers.0.attn.out_proj.weight"] = torch.zeros(128, 128)


def _setup_bad(model, tmp_path, edit, yaml_kw) -> list[str]:
    sd = corenet_state(model)
    if edit is not None:
        edit(sd)
    torch.save({"model_state_dict": sd}, tmp_path / "ckpt.pt")
    recipe = write_recipe(tmp_path / "r.yaml", **yaml_kw)
    return ["openelm", "convert", "--from-corenet", str(tmp_path / "ckpt.pt"), "--config", str(recipe),
            "--out", str(tmp_path / "out")]


# Run as real `python -m corefm.cli` processes: the exit code and the single stderr line are the contract.
@pytest.mark.parametrize("edit, yaml_kw, messages", [
    (_bad_unknown, {}, ["layers.0.attn.rotary.inv_freq is not a CoreNet general_gpt parameter"]),
    (_bad_missing, {}, ["missing layers.0.ffn.proj_2.weight, which ", "model_name 'gpt-test'"]),
    (_bad_shape, {}, ["layers.0.attn.out_proj.weight has shape (128, 128) but ", "implies (128, 64)"]),
    (None, {"vocab": 1000}, ["token_embeddings.weight has 512 rows but ",
                             "sets model.language_modeling.general_gpt.vocab_size to 1000"]),
], ids=["unknown-key", "missing-key", "wrong-shape", "yaml-vocab"])
def test_bad_inputs_are_one_line_errors_through_the_cli(gpt_test, tmp_path, edit, yaml_kw, messages):
    r = corefm_cmd(*_setup_bad(gpt_test[0], tmp_path, edit, yaml_kw))
    assert r.returncode == 2, (r.stdout, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("corefm: error: "), r.stderr
    assert all(m in lines[0] for m in messages), lines[0]
    assert not (tmp_path / "out").exists()


# The same contract through corefm.cli.main in this process (no new interpreter per case).
@pytest.mark.parametrize("edit, yaml_kw, extra, message", [
    (None, {"model_name": "OpenELM-270M"}, [], "has 1 transformer layer(s) (layers.0-0) but "),
    (None, {"model_name": "OpenELM-9B"}, [], "model_name 'OpenELM-9B' is not one of CoreNet's general_gpt configs"),
    (None, {"extra": "      num_transformer_layers: 2\n"}, [],
     "unknown CoreNet key model.language_modeling.general_gpt.num_transformer_layers"),
    (None, {"vocab": "'512'"}, [], "general_gpt.vocab_size must be int, got '512'"),
    (None, {}, ["--ema"], "--ema given but the checkpoint has no ema_state_dict"),
    (None, {}, ["--vocab-size", "600"], "--vocab-size 600: must be in 1..512"),
    (None, {}, ["--config-out", "x.yaml"], "--config-out goes with --to-corenet"),
    (None, {}, ["--tokenizer", "/nonexistent"], "--tokenizer /nonexistent: no tokenizer files there"),
    (lambda sd: sd.update({"classifier.weight": torch.zeros(VOCAB, 128)}), {}, [],
     "classifier.weight does not belong to "),
])
def test_more_bad_inputs(gpt_test, tmp_path, capsys, edit, yaml_kw, extra, message):
    assert main(_setup_bad(gpt_test[0], tmp_path, edit, yaml_kw) + extra) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("corefm: error: ") and message in err, err


def test_unreadable_inputs(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    (tmp_path / "r.yaml").write_text("model: [unclosed\n")
    for argv, message in (
            (["--from-corenet", str(tmp_path / "none.pt"), "--config", str(write_recipe(tmp_path / "ok.yaml"))],
             "none.pt: no such file"),
            (["--from-corenet", str(tmp_path / "junk.pt"), "--config", str(tmp_path / "ok.yaml")],
             "junk.pt: not a readable torch checkpoint"),
            (["--from-corenet", str(tmp_path / "junk.pt"), "--config", str(tmp_path / "r.yaml")], "not valid YAML"),
            (["--from-corenet", str(tmp_path / "junk.pt")], "--from-corenet needs --config"),
            (["--to-corenet", str(tmp_path / "nothing-here")], "no such folder"),
            ([], "give exactly one of --from-corenet CKPT and --to-corenet RELEASE")):
        assert main(["openelm", "convert", *argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("corefm: error: ") and message in err, err
