"""Instruction tuning of OpenELM (projects/openelm/instruct): WordNet data, the chat template's
response-only labels, packing without cross-example attention, LoRA adapters through peft (round
trip, merge), and a tiny end-to-end run through the CLI (2 CPU ranks) whose release loads with
plain transformers and with peft."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import require_wordnet
from tests.e2e.util import ROOT, corefm_cmd, error_line, final, losses, run, train_cmd

from ._lm_data import ENDINGS, NAMES, OBJECTS, VERBS, sentence

RECIPE = ROOT / "projects/openelm/configs/instruct_lora.yaml"


# --- fixtures ---------------------------------------------------------------------------------------------
def tiny_config(vocab_size: int):
    from projects.openelm.config import named_config

    return named_config("tiny", vocab_size=vocab_size)


@pytest.fixture(scope="module")
def base_release(tmp_path_factory, lm_tokenizer):
    """A random tiny OpenELM (vocabulary = the 300-piece test tokenizer) as a release folder."""
    from projects.openelm.convert import save_hf
    from projects.openelm.model import OpenELM

    torch.manual_seed(0)
    cfg = tiny_config(300)
    out = tmp_path_factory.mktemp("base") / "release"
    save_hf(OpenELM(cfg), cfg, out, tokenizer_dir=lm_tokenizer)
    return out


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory, base_release):
    from projects.openelm.instruct.chat import load_chat_tokenizer, write_chat_tokenizer

    return load_chat_tokenizer(write_chat_tokenizer(base_release, tmp_path_factory.mktemp("chat") / "tok"))


def conversation(rng: random.Random, turns: int = 1, system: bool = False) -> list[dict]:
    msgs = [{"role": "system", "content": "Answer in one sentence."}] if system else []
    for _ in range(turns):
        msgs.append({"role": "user", "content": f"What does {rng.choice(NAMES)} do?"})
        msgs.append({"role": "assistant", "content": sentence(rng)})
    return msgs


def lora_model(base_release: Path, r: int = 4, scale_b: float = 0.1):
    """corefm's OpenELM from the release with LoRA on every projection, B made non-zero."""
    from projects.openelm.instruct.model import FinetuneConfig, build_openelm_finetune

    torch.manual_seed(3)
    model = build_openelm_finetune(FinetuneConfig(base=str(base_release), lora_r=r, lora_alpha=2.0 * r))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0.0, scale_b)
    return model.eval()


# --- the chat template and response-only labels -----------------------------------------------------------
def test_labels_are_exactly_the_response_tokens(chat_tokenizer):
    """labels == input id on every assistant token (reply + </s>), -100 on BOS, role headers, separators,
    system and user text; checked against the prefixes the template renders turn by turn."""
    from projects.openelm.instruct.chat import IGNORE, encode_chats

    tok = chat_tokenizer
    rng = random.Random(0)
    convs = [conversation(rng), conversation(rng, turns=3, system=True)]
    for msgs, (ids, labels) in zip(convs, encode_chats(tok, convs)):
        assert ids == tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
        expected = [IGNORE] * len(ids)
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prompt = tok.apply_chat_template(msgs[:i], tokenize=True, add_generation_prompt=True,
                                             return_dict=True)["input_ids"]
            through = tok.apply_chat_template(msgs[:i + 1], tokenize=True, return_dict=True)["input_ids"]
            assert ids[:len(through)] == through and ids[:len(prompt)] == prompt  # prefixes: same ids in context
            expected[len(prompt):len(through)] = ids[len(prompt):len(through)]
            assert tok.decode(ids[len(prompt):len(through)]) == m["content"] + tok.eos_token
            assert through[-1] == tok.eos_token_id
        assert labels == expected
        assert ids[0] == tok.bos_token_id and labels[0] == IGNORE
        kept = [i for i, x in enumerate(labels) if x != IGNORE]
        assert all(labels[i] == ids[i] for i in kept) and len(kept) < len(ids) // 2
    rendered = tok.apply_chat_template(convs[0][:1], tokenize=False, add_generation_prompt=True)
    assert rendered == f"<s>### User:\n{convs[0][0]['content']}\n\n### Assistant:\n"


def test_generation_prompt_is_a_prefix_of_the_trained_conversation(chat_tokenizer):
    from projects.openelm.instruct.chat import chat_prompt_ids, encode_chats

    msgs = conversation(random.Random(5))
    prompt = chat_prompt_ids(chat_tokenizer, msgs[0]["content"])
    (ids, labels), = encode_chats(chat_tokenizer, [msgs])
    assert ids[:len(prompt)] == prompt and labels[len(prompt)] == ids[len(prompt)]
    assert labels[len(prompt) - 1] == -100


# --- packing ----------------------------------------------------------------------------------------------
def test_pack_rows_keeps_every_example_whole_and_once():
    from projects.openelm.instruct.packing import PackStats, pack_rows

    rng = random.Random(1)
    examples = []
    for n in range(60):
        length = rng.randint(3, 30)
        ids = [rng.randint(3, 299) for _ in range(length)]
        labels = [-100 if i < length // 2 else t for i, t in enumerate(ids)]
        examples.append((ids, labels))
    examples.append(([5] * 40, [5] * 40))  # longer than a row: dropped, not cut
    stats = PackStats()
    rows = pack_rows(examples, 32, stats)
    assert stats.dropped_too_long == 1 and stats.examples == 60
    found = []
    for row in rows:
        seg = row["segments"]
        assert len(seg) == 32 and seg.dtype == np.int32
        used = seg > 0
        assert (np.diff(used.astype(int)) <= 0).all()  # padding only at the end
        for s in range(1, seg.max() + 1):
            where = np.flatnonzero(seg == s)
            assert len(where) and (np.diff(where) == 1).all()  # one contiguous run per example
            found.append((row["tokens"][where].tolist(), row["labels"][where].tolist()))
        assert (row["labels"][~used] == -100).all()
    assert sorted(found) == sorted(examples[:60])
    assert stats.tokens == sum(len(i) for i, _ in examples[:60])
    assert stats.rows == len(rows) <= 1.2 * stats.tokens / 32  # first-fit leaves little padding
    assert np.mean([r["segments"].max() for r in rows]) > 1.5  # several examples per row


def test_packed_logits_equal_each_example_alone(base_release):
    """A token's logits in a packed row equal those of its example run alone: attention never crosses
    examples and positions restart, for corefm's model (with LoRA) and for the transformers model
    (4-D attention mask + position_ids from the same segments)."""
    from transformers import AutoModelForCausalLM

    from projects.openelm.instruct.packing import (
        next_token_targets,
        pack_rows,
        segment_mask,
        segment_positions,
    )

    rng = random.Random(2)
    examples = [([1] + [rng.randint(3, 299) for _ in range(n - 1)], [-100] * (n - 3) + [7, 8, 2])
                for n in (9, 14, 6, 11)]
    rows = pack_rows(examples, 48)
    assert len(rows) == 1 and rows[0]["segments"].max() == 4
    row = {k: torch.from_numpy(v.astype(np.int64))[None] for k, v in rows[0].items()}
    model = lora_model(base_release)
    hf = AutoModelForCausalLM.from_pretrained(base_release, trust_remote_code=True).eval()
    with torch.no_grad():
        packed = model(row["tokens"], segments=row["segments"])[0]
        hf_packed = hf(input_ids=row["tokens"], attention_mask=segment_mask(row["segments"]),
                       position_ids=segment_positions(row["segments"])).logits[0]
        at = 0
        for ids, _ in examples:
            alone = model(torch.tensor([ids]))[0]
            torch.testing.assert_close(packed[at:at + len(ids)], alone, rtol=0, atol=1e-5)
            hf_alone = hf(input_ids=torch.tensor([ids])).logits[0]
            torch.testing.assert_close(hf_packed[at:at + len(ids)], hf_alone, rtol=0, atol=1e-5)
            at += len(ids)
        # and the example really does differ when it may see the one before it (the mask matters)
        plain = model(row["tokens"])[0]
        assert (plain[9:23] - packed[9:23]).abs().max() > 1e-2
    targets = next_token_targets(row["labels"], row["segments"])[0]
    ends = np.cumsum([len(i) for i, _ in examples]) - 1
    assert (targets[ends] == -100).all()  # an example's last token never predicts the next example
    assert targets[ends[0] - 1] == 2 and targets[ends[0] - 3] == 7  # ... but its own reply is scored


# --- LoRA adapters: peft round trip and merge -------------------------------------------------------------
def test_lora_only_trains_adapters(base_release):
    model = lora_model(base_release)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    modules = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert modules == {"qkv_proj", "out_proj", "proj_1", "proj_2"}
    assert not any("token_embeddings" in n or "norm" in n for n in trainable)


def test_adapter_folder_round_trip_and_merge(base_release, tmp_path):
    """The adapter written for peft reloads (PeftModel.from_pretrained on the transformers base) to the
    logits of corefm's LoRA model, and the merged release gives the base+adapter logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from projects.openelm.convert import assign_weights, save_hf
    from projects.openelm.instruct.release import (
        merge_adapter,
        split_run_state,
        write_adapter,
    )
    from projects.openelm.model import OpenELM

    model = lora_model(base_release)
    frozen, adapter = split_run_state(dict(model.state_dict()))
    assert len(adapter) == 4 * 4 * 2 and all(k.startswith("base_model.model.transformer.layers.") for k in adapter)
    write_adapter(tmp_path / "adapter", adapter, model.cfg, str(base_release), None)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["task_type"] == "CAUSAL_LM"

    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(base_release, trust_remote_code=True).eval()
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        ours = model(ids)
        theirs = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert (theirs - plain).abs().max() > 0.1  # the adapter changes the model

    merged_state = merge_adapter(frozen, adapter, model.cfg.lora_alpha / model.cfg.lora_r)
    cfg = tiny_config(300)
    merged = OpenELM(cfg)
    assign_weights(merged, merged_state, "merged")
    save_hf(merged, cfg, tmp_path / "merged")
    # float64, so the comparison sees the merge and the fp32 storage of its sum, not fp32 matmul order
    base64 = AutoModelForCausalLM.from_pretrained(base_release, trust_remote_code=True, dtype=torch.float64).eval()
    with_adapter = PeftModel.from_pretrained(base64, tmp_path / "adapter").eval()
    merged_hf = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", trust_remote_code=True,
                                                     dtype=torch.float64).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged_hf(input_ids=ids).logits, with_adapter(input_ids=ids).logits,
                                   rtol=0, atol=1e-5)
    # and corefm's own loader of adapter folders merges the same way
    from projects.openelm.instruct.release import load_model_folder

    loaded, _ = load_model_folder(tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), merged_hf(input_ids=ids).logits.float(), rtol=0, atol=1e-4)


# --- WordNet -----------------------------------------------------------------------------------------------
def write_wordnet(folder: Path, words: list[str], seed: int = 0) -> Path:
    """A WordNet dict folder in wndb(5) format: licence header, synsets at their byte offsets, index
    lines with the senses ordered; glosses are sentences of the test grammar (learnable replies)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    header = "  1 This software and database is a test stand-in for WordNet 3.0.\n  2 \n"
    for pos, letter in (("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r")):
        use = words if pos == "noun" else words[: len(words) // 4] if pos == "verb" else []
        data, index, offset = [header], [header], len(header.encode())
        for word in use:
            offsets = []
            for sense in range(2):
                lemmas = [word] + ([f"{word}_{rng.choice(OBJECTS).split()[-1]}"] if sense == 0 else [])
                gloss = (f"{rng.choice(NAMES).lower()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}; "
                         f'"{rng.choice(NAMES)} {rng.choice(VERBS)} the {word} {rng.choice(ENDINGS)}"')
                words_part = " ".join(f"{lemma} 0" for lemma in lemmas)
                line = f"{offset:08d} 05 {letter} {len(lemmas):02x} {words_part} 000 | {gloss}  \n"
                data.append(line)
                offsets.append(offset)
                offset += len(line.encode())
            index.append(f"{word} {letter} 2 1 @ 2 1 {' '.join(f'{o:08d}' for o in offsets)}  \n")
        (folder / f"data.{pos}").write_text("".join(data))
        (folder / f"index.{pos}").write_text("".join(index))
    return folder


def test_wordnet_examples_and_split_by_word(tmp_path):
    from projects.openelm.instruct.wordnet import write_instruct_data

    words = [f"{v[:-1]}ment{i}" for i in range(12) for v in VERBS[:4]]
    root = write_wordnet(tmp_path / "wn", words)
    manifest = write_instruct_data(root, tmp_path / "out", val_words=6)
    train = [json.loads(x) for x in (tmp_path / "out/train.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (tmp_path / "out/val.jsonl").read_text().splitlines()]
    assert {e["word"] for e in train}.isdisjoint({e["word"] for e in val}) and len({e["word"] for e in val}) == 6
    assert manifest["splits"]["val"]["words"] == 6
    kinds = {(e["word"], e["pos"], e["kind"]) for e in train + val}
    assert {(w, p, "definition") for w in words for p in ("noun",)} <= kinds
    assert {(w, "verb", "definition") for w in words[:len(words) // 4]} <= kinds
    first = next(e for e in train + val if e["pos"] == "noun" and e["kind"] == "definition")
    q, a = first["messages"]
    assert q["content"] == f'What does the noun "{first["word"]}" mean?' and a["content"][0].isupper()
    assert a["content"].endswith(".") and '"' not in a["content"]
    examples = [e for e in train + val if e["kind"] == "example"]
    assert examples and all(e["word"] in e["messages"][1]["content"] for e in examples)
    synonyms = [e for e in train + val if e["kind"] == "synonym"]
    assert synonyms and all(e["word"] + " " in e["messages"][1]["content"] for e in synonyms)
    # deterministic, and independent of the order of the files' entries
    again = write_instruct_data(root, tmp_path / "again", val_words=6)
    assert (tmp_path / "again/val.jsonl").read_bytes() == (tmp_path / "out/val.jsonl").read_bytes()
    assert again == manifest


def test_real_wordnet_first_sense():
    require_wordnet()
    from projects.openelm.instruct.wordnet import WordNetFiles, conversations

    wn = WordNetFiles("/usr/share/wordnet")
    offsets = wn.index("noun")["dog"]
    senses = wn.senses("noun", set(offsets))
    convs = conversations("dog", "noun", [senses[o] for o in offsets])
    by_kind = {c["kind"]: c["messages"][1]["content"] for c in convs}
    assert by_kind["definition"].startswith("A member of the genus Canis")
    assert "domestic dog" in by_kind["synonym"] and "Canis familiaris" in by_kind["synonym"]
    assert "dog" in by_kind["example"].lower()


# --- end to end through the CLI ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def packed(tmp_path_factory, base_release):
    root = tmp_path_factory.mktemp("instruct")
    words = [f"{v[:-1]}{suffix}{i}" for i in range(30) for v in VERBS for suffix in ("ment",)]
    write_wordnet(root / "wn", words, seed=1)
    r = run(corefm_cmd("openelm", "instruct-data", "--wordnet", str(root / "wn"), "--out", str(root / "chat"),
                       "--val-words", "16"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "val.jsonl" in r.stdout and "about 16 words" in r.stdout
    r = run(corefm_cmd("openelm", "instruct-pack", "--train", str(root / "chat/train.jsonl"), "--val",
                       str(root / "chat/val.jsonl"), "--tokenizer", str(base_release), "--out", str(root / "packed"),
                       "--seq-len", "128", "--train-shards", "4", "--val-shards", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "train:" in r.stdout and "val:" in r.stdout and "filled" in r.stdout
    return root


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, packed, base_release):
    run_dir = tmp_path_factory.mktemp("run") / "lora"
    sets = {"run_dir": run_dir, "model.base": base_release, "data.train": packed / "packed/train",
            "data.val": packed / "packed/val", "train.max_steps": 40, "train.micro_batch_size": 4,
            "optim.lr": 1e-2, "schedule.warmup_steps": 4, "checkpoint.every": 20, "log.every": 4,
            "log.progress": False, "eval.every": 0, "data.num_workers": 1, "model.lora_r": 8,
            "model.lora_alpha": 16.0, "model.lora_dropout": 0.0}
    r = run(train_cmd([f"{k}={v}" for k, v in sets.items()], recipe=RECIPE), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    assert "openelm_finetune/instruct_lm" in r.stdout
    return run_dir


@pytest.mark.slow
def test_lora_run_loss_falls_and_release_loads(tuned, packed, base_release, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = losses(tuned)
    assert steps[40] < steps[4] - 1.0, steps
    assert final(tuned)["eval"]["loss"] < steps[4] - 1.0
    release = tmp_path / "release"
    r = run(corefm_cmd("release", str(tuned), "--out", str(release)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "adapter/adapter_model.safetensors" in r.stdout and "model.safetensors" in r.stdout
    # plain transformers: merged model + tokenizer with the chat template
    model = AutoModelForCausalLM.from_pretrained(release, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(release, trust_remote_code=True)
    assert "{% generation %}" in json.loads((release / "tokenizer_config.json").read_text())["chat_template"]
    ids = tok.apply_chat_template([{"role": "user", "content": "What does Romeo do?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert tok.decode(ids[0]).endswith("### Assistant:\n")
    # peft: the adapter on the base gives the merged model's logits
    base = AutoModelForCausalLM.from_pretrained(base_release, trust_remote_code=True)
    adapted = PeftModel.from_pretrained(base, release / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=1e-4)
    # held-out response loss: tuned well below the base, adapter folder == merged folder
    results = {}
    for name, folder in (("base", base_release), ("merged", release), ("adapter", release / "adapter")):
        r = run(corefm_cmd("openelm", "instruct-eval", str(folder), "--data", str(packed / "packed/val"), "--json"))
        assert r.returncode == 0, r.stderr[-3000:]
        results[name] = json.loads(r.stdout)
    assert results["merged"]["tokens"] == results["base"]["tokens"] > 0
    assert results["merged"]["loss"] < results["base"]["loss"] - 1.0, results
    assert results["adapter"]["loss"] == pytest.approx(results["merged"]["loss"], abs=1e-4)
    assert final(tuned)["eval"]["loss"] == pytest.approx(results["merged"]["loss"], abs=0.05)  # bf16 vs fp32
    # generate in the chat format, from the merged folder and from the adapter folder
    for folder in (release, release / "adapter"):
        r = run(corefm_cmd("openelm", "generate", str(folder), "--chat", "--prompt", 'What does the noun "x" mean?',
                           "--max-new-tokens", "12"))
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.startswith('### User:\nWhat does the noun "x" mean?\n\n### Assistant:\n'), r.stdout


@pytest.mark.slow
def test_full_finetuning_trains_every_weight_and_releases_one_folder(packed, base_release, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "full"
    sets = {"run_dir": run_dir, "model.base": base_release, "model.method": "full",
            "data.train": packed / "packed/train", "data.val": packed / "packed/val", "train.max_steps": 12,
            "train.micro_batch_size": 4, "optim.lr": 3e-3, "schedule.warmup_steps": 2, "checkpoint.every": 0,
            "log.every": 2, "log.progress": False, "eval.every": 0, "data.num_workers": 1,
            "deepspeed.precision": "fp32"}
    r = run(train_cmd([f"{k}={v}" for k, v in sets.items()], recipe=RECIPE), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    steps = losses(run_dir)
    assert steps[12] < steps[2] - 0.5, steps
    release = tmp_path / "release"
    r = run(corefm_cmd("release", str(run_dir), "--out", str(release)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (release / "adapter").exists()
    tuned, base = load_file(str(release / "model.safetensors")), load_file(str(base_release / "model.safetensors"))
    assert set(tuned) == set(base)
    changed = {k for k in base if not torch.equal(tuned[k], base[k])}
    assert "transformer.token_embeddings.weight" in changed and len(changed) == len(base)  # every weight trained
    model = AutoModelForCausalLM.from_pretrained(release, trust_remote_code=True)
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 5, 9]])).logits).all()


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors(tmp_path, base_release, packed):
    r = run(corefm_cmd("openelm", "instruct-data", "--wordnet", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")))
    error_line(r, "not a WordNet 3.0 dict folder")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    r = run(corefm_cmd("openelm", "instruct-pack", "--train", str(bad), "--tokenizer", str(base_release),
                       "--out", str(tmp_path / "p")))
    error_line(r, "bad.jsonl:1", "no assistant message")
    r = run(corefm_cmd("openelm", "instruct-pack", "--train", str(packed / "chat/train.jsonl"), "--tokenizer",
                       str(tmp_path), "--out", str(tmp_path / "p")))
    error_line(r, "--tokenizer")
    shards = [f"data.train={packed / 'packed/train'}", f"data.val={packed / 'packed/val'}"]
    r = run(train_cmd([f"model.base={tmp_path / 'missing'}", f"run_dir={tmp_path / 'r'}", *shards], recipe=RECIPE))
    error_line(r, "model.base", "missing")
    r = run(train_cmd([f"model.base={base_release}", "model.lora_targets=[token_embeddings]",
                       f"run_dir={tmp_path / 'r'}", *shards], recipe=RECIPE))
    error_line(r, "model.lora_targets")
    r = run(corefm_cmd("openelm", "generate", str(base_release), "--chat", "--prompt", "hi"))
    error_line(r, "chat_template")
    r = run(corefm_cmd("openelm", "instruct-eval", str(tmp_path), "--data", str(packed / "packed/val")))
    error_line(r, "config.json")
    r = run(corefm_cmd("openelm", "instruct-eval", str(base_release), "--data", str(packed / "chat")))
    error_line(r, "--data")
