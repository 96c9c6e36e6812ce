"""OpenELM end to end on 2 CPU ranks: tokenize -> train (bf16, z-loss, activation checkpointing) ->
beat the unigram baseline -> average checkpoints -> release -> transformers and lm-eval load it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.e2e.util import ROOT, corefm_cmd, final, losses, run, train_cmd
from ._lm_data import documents, write_text_files

pytestmark = pytest.mark.slow
TINY = ROOT / "projects/openelm/configs/tiny.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory, lm_tokenizer):
    root = tmp_path_factory.mktemp("lm")
    write_text_files(root / "txt", documents(80, seed=7))
    r = run(corefm_cmd("openelm", "tokenize", "--input", str(root / "txt"), "--tokenizer", str(lm_tokenizer),
                       "--out", str(root / "data"), "--seq-len", "32", "--val-docs", "8", "--val-shards", "2",
                       "--shard-samples", "16"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "val:" in r.stdout and "train:" in r.stdout
    return root / "data"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    sets = {"run_dir": run_dir, "data.train": data / "train", "data.val": data / "val", "task.name": "causal_lm",
            "task.z_loss": 1e-4, "deepspeed.precision": "bf16", "model.activation_checkpointing": True,
            "train.max_steps": 36, "train.micro_batch_size": 8, "checkpoint.every": 12, "checkpoint.keep_last": 3,
            "schedule.warmup_steps": 6, "log.every": 6, "log.progress": False, "eval.every": 0,
            "data.num_workers": 1}
    r = run(train_cmd([f"{k}={v}" for k, v in sets.items()], recipe=TINY), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    assert "bf16" in r.stdout
    return run_dir


def test_training_beats_the_unigram_baseline(trained):
    steps = losses(trained)
    assert steps[36] < steps[6] - 1.0, steps
    r = run(corefm_cmd("openelm", "baseline", str(trained)))
    assert r.returncode == 0, r.stderr[-3000:]
    unigram = json.loads((trained / "baseline.json").read_text())["unigram"]["perplexity"]
    model = final(trained)["eval"]["perplexity"]
    assert f"val ppl {model:.1f} vs unigram {unigram:.1f}" in r.stdout
    assert model < 0.5 * unigram, (model, unigram)


def test_average_of_the_last_checkpoints(trained, tmp_path):
    from corefm.train.export import fp32_state_dict

    out = tmp_path / "avg.safetensors"
    r = run(corefm_cmd("openelm", "average", str(trained), "--last", "3", "--out", str(out)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "steps 12, 24, 36" in r.stdout and "perplexity" in r.stdout
    ckpts = sorted((trained / "checkpoints").glob("step_*"))
    states = [fp32_state_dict(c) for c in ckpts]
    mean = load_file(str(out))
    key = "layers.2.ffn.proj_1.weight"
    want = (states[0]["model." + key].double() + states[1]["model." + key].double()
            + states[2]["model." + key].double()) / 3
    torch.testing.assert_close(mean[key].double(), want, rtol=0, atol=1e-7)
    assert not torch.equal(mean[key], states[2]["model." + key])
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["averaged_steps"] == "12,24,36"
    r = run(corefm_cmd("openelm", "average", str(trained), "--last", "4"))
    assert r.returncode == 2 and "fewer than --last 4" in r.stderr


def test_release_loads_in_transformers_and_runs_lm_eval(trained, tmp_path, lm_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    release = tmp_path / "release"
    r = run(corefm_cmd("release", str(trained), "--out", str(release)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "dry run" in r.stdout and "tokenizer.json" in r.stdout and "model.safetensors" in r.stdout
    model = AutoModelForCausalLM.from_pretrained(release, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(release, trust_remote_code=True)  # as the card prints it
    assert tok("Romeo loves the king").input_ids[0] == 1 and len(tok) == 300
    r = run(corefm_cmd("openelm", "generate", str(release), "--prompt", "Romeo loves", "--max-new-tokens", "8"))
    assert r.returncode == 0 and r.stdout.startswith("Romeo loves"), r.stderr[-3000:]
    # transformers asks before running a folder's custom code; corefm's own loading never makes it ask
    assert "Do you wish to run the custom code" not in r.stdout + r.stderr
    card = (release / "README.md").read_text()
    assert "| 3 | 4 | 2 | 256 |" in card  # the last layer's query heads, KV heads and FFN width
    assert f"{36 * 8 * 2 * 32:,} tokens seen" in card and "perplexity" in card and "unigram baseline" in card
    # a small multiple-choice task in lm-eval's YAML format over a local JSON file
    docs = [{"q": "Romeo loves the", "choices": [" king", " storm sword"], "gold": 0},
            {"q": "Hamlet fears a", "choices": [" ghost", " Ophelia at"], "gold": 0},
            {"q": "Lear calls the fool", "choices": [" in the night.", " the king the"], "gold": 0}]
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tasks / 'mc.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{gold}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    r = run(corefm_cmd("openelm", "lm-eval", str(release), "--tasks", "tiny_mc", "--include-path", str(tasks)))
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((release / "lm_eval.json").read_text())["results"]["tiny_mc"]["acc"]
    # the same choice made by hand with the transformers model: BOS + context, sum of log p(choice)
    correct = 0
    for d in docs:
        scores = []
        for choice in d["choices"]:
            ctx = tok(d["q"]).input_ids
            whole = tok(d["q"] + choice).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
            scores.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole))))
        correct += int(np.argmax(scores) == d["gold"])
    assert got == pytest.approx(correct / len(docs))
    assert correct >= 2  # the trained model prefers the grammatical continuation
    # lm-eval's own HF model, run as the model card prints it, scores every choice as BOS + context
    out_dir = tmp_path / "lm_eval_hf"
    line = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={release},trust_remote_code=True,add_bos_token=True",
            "--tasks", "tiny_mc", "--include_path", str(tasks), "--output_path", str(out_dir), "--log_samples"]
    assert (f"lm_eval --model hf --model_args pretrained={release.name},trust_remote_code=True,add_bos_token=True "
            "--tasks") in card
    r = run([str(Path(sys.executable).parent / "lm_eval"), *line[1:]], env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    samples = [json.loads(x) for f in out_dir.rglob("samples_tiny_mc_*.jsonl") for x in f.read_text().splitlines()]
    assert len(samples) == len(docs)
    for sample in samples:
        for args, resp in zip(sample["arguments"].values(), sample["resps"]):
            ctx, whole = tok(args["arg_0"]).input_ids, tok(args["arg_0"] + args["arg_1"]).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
            by_hand = sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))
            assert float(resp[0][0]) == pytest.approx(by_hand, abs=1e-3)
    hf_acc = next(out_dir.rglob("results_*.json")).read_text()
    assert json.loads(hf_acc)["results"]["tiny_mc"]["acc,none"] == pytest.approx(got)
    # generate_until (packed bf16 weights, KV cache) against greedy decoding by full recompute
    from projects.openelm.lm_eval_adapter import OpenELMLM

    lm = OpenELMLM(str(release), dtype="bfloat16")
    ids = torch.tensor([lm.tok_encode("Romeo loves")])
    with torch.no_grad():
        for _ in range(6):  # stopping after EOS, as generate does
            ids = torch.cat([ids, lm.model(ids)[:, -1].float().argmax(-1, keepdim=True)], dim=1)
            if ids[0, -1] == lm.eot_token_id:
                break
    expected = lm.tok_decode(ids[0, len(lm.tok_encode("Romeo loves")):].tolist())
    requests = [SimpleNamespace(args=("Romeo loves", {"max_gen_toks": 6}))] * 2
    assert lm.generate_until(requests) == [expected, expected]
    stop = expected.strip()[:2]
    cut = lm.generate_until([SimpleNamespace(args=("Romeo loves", {"until": [stop], "max_gen_toks": 6}))])
    assert cut == [expected[: expected.index(stop)]]


def test_zero3_with_tied_embeddings_matches_zero1(data, tmp_path):
    """OpenELM ties the LM head to the embedding: under ZeRO-3 that one partitioned tensor gets
    gradients from both ends of the model. Same losses as ZeRO-1 (fp32), and the export keeps a
    single tied tensor that transformers loads."""
    from transformers import AutoModelForCausalLM

    import projects.openelm  # noqa: F401  (registers the Auto classes)

    curves = {}
    for stage in (1, 3):
        run_dir = tmp_path / f"zero{stage}"
        sets = {"run_dir": run_dir, "data.train": data / "train", "data.val": data / "val",
                "deepspeed.zero_stage": stage, "deepspeed.precision": "fp32", "train.max_steps": 8,
                "train.micro_batch_size": 4, "log.every": 1, "log.progress": False, "eval.every": 0,
                "checkpoint.every": 0, "data.num_workers": 1, "schedule.warmup_steps": 2}
        r = run(train_cmd([f"{k}={v}" for k, v in sets.items()], recipe=TINY), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
        curves[stage] = losses(run_dir)
    assert sorted(curves[3]) == list(range(1, 9))
    for step, loss in curves[1].items():
        assert curves[3][step] == pytest.approx(loss, rel=1e-4, abs=1e-4), (step, curves)
    assert curves[3][8] < curves[3][1]
    state = load_file(str(tmp_path / "zero3" / "model.safetensors"))
    assert "token_embeddings.weight" in state and not any(k.startswith("lm_head") for k in state)
    out = tmp_path / "release"
    r = run(corefm_cmd("release", str(tmp_path / "zero3"), "--out", str(out)))
    assert r.returncode == 0, r.stderr[-3000:]
    hf = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(3, 500, (1, 12))
    assert torch.isfinite(hf(ids).logits).all()
