"""`corefm openelm tokenize`: packing arithmetic, chunk-and-pad, document-disjoint val split, input formats."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from transformers import AutoTokenizer

from corefm.cli import main
from corefm.data import DataError, load_manifest
from corefm.data.shards import iter_shard
from corefm.data.urls import expand_urls
from projects.openelm.data.token_shards import Packer, TokenizeConfig, chunk_pad, tokenize_corpus
from projects.openelm.baseline import unigram_perplexity
from ._lm_data import documents, write_text_files

SEQ = 16


def samples(folder) -> list[np.ndarray]:
    """All tokens.npy of a shard set, in key order (= the order they were made)."""
    out = []
    for url in expand_urls(str(folder)):
        for s in iter_shard(url):
            out.append((s["__key__"], np.load(io.BytesIO(s["tokens.npy"]), allow_pickle=False)))
    return [t for _, t in sorted(out, key=lambda kv: kv[0])]


def expected_docs(tok_dir, docs: list[str]) -> list[list[int]]:
    tok = AutoTokenizer.from_pretrained(tok_dir)
    return [[tok.bos_token_id] + tok.encode(d, add_special_tokens=False) + [tok.eos_token_id] for d in docs]


def run(tmp_path, tok, inputs, name="out", **kw) -> tuple[dict, object]:
    cfg = TokenizeConfig(inputs=[str(i) for i in inputs], tokenizer=str(tok), out=str(tmp_path / name), seq_len=SEQ,
                         shard_samples=7, **kw)
    return tokenize_corpus(cfg), tmp_path / name


def test_pack_keeps_every_token_once_with_eos_between_documents(tmp_path, lm_tokenizer):
    docs = documents(6, seed=1)
    result, out = run(tmp_path, lm_tokenizer, write_text_files(tmp_path / "txt", docs))
    want = [t for d in expected_docs(lm_tokenizer, docs) for t in d]
    got = samples(out / "train")
    assert all(s.dtype == np.int32 and s.shape == (SEQ + 1,) for s in got)
    assert len(got) == math.ceil(len(want) / (SEQ + 1)) == result["train"]["samples"]
    assert all((s >= 0).all() for s in got[:-1]), "only the last window may hold padding"
    flat = np.concatenate(got)
    assert (flat[len(want):] == -1).all() and flat[: len(want)].tolist() == want
    assert result["train"]["tokens"] == len(want) and int((flat == 2).sum()) == 6  # one EOS per document
    producer = load_manifest(out / "train").producer
    assert (producer["mode"], producer["seq_len"], producer["tokenizer"]["vocab_size"]) == ("pack", SEQ, 300)
    assert len(producer["tokenizer"]["sha256"]) == 64 and (out / "tokenizer" / "tokenizer.json").is_file()
    assert len(load_manifest(out / "train").shards) == math.ceil(len(got) / 7)


def test_chunk_pad_pads_only_at_document_ends(tmp_path, lm_tokenizer):
    docs = documents(5, seed=2)
    result, out = run(tmp_path, lm_tokenizer, write_text_files(tmp_path / "txt", docs), mode="chunk-pad")
    want = expected_docs(lm_tokenizer, docs)
    got = samples(out / "train")
    assert len(got) == sum(math.ceil(len(d) / (SEQ + 1)) for d in want)
    rebuilt, current = [], []
    for s in got:
        real = s[s >= 0].tolist()
        assert (s[len(real):] == -1).all(), "padding must be a suffix"
        if real[0] == 1 and current:  # a window that starts with BOS starts the next document
            rebuilt.append(current)
            current = []
        current += real
        assert len(real) == SEQ + 1 or real[-1] == 2, "only a document's last window is padded"
    rebuilt.append(current)
    assert rebuilt == want
    assert result["train"]["padding"] == len(got) * (SEQ + 1) - sum(map(len, want))


def test_val_split_is_disjoint_by_document_and_output_is_deterministic(tmp_path, lm_tokenizer):
    docs = documents(20, seed=3)
    files = write_text_files(tmp_path / "txt", docs)
    result, out = run(tmp_path, lm_tokenizer, files, val_docs=4, val_shards=2)
    val_ids = load_manifest(out / "val").producer["doc_ids"]
    assert len(val_ids) == 4 and result["val"]["documents"] == 4 and result["train"]["documents"] == 16
    assert len(load_manifest(out / "val").shards) == 2
    enc = dict(zip((str(f) for f in files), expected_docs(lm_tokenizer, docs)))
    val_tokens = np.concatenate(samples(out / "val"))
    assert val_tokens[val_tokens >= 0].tolist() == [t for f in map(str, files) if f in val_ids for t in enc[f]]
    train_tokens = np.concatenate(samples(out / "train"))
    assert train_tokens[train_tokens >= 0].tolist() == [t for f in map(str, files) if f not in val_ids for t in enc[f]]
    _, again = run(tmp_path, lm_tokenizer, files, name="again", val_docs=4, val_shards=2)
    for split in ("train", "val"):
        assert [s.sha256 for s in load_manifest(out / split).shards] == \
               [s.sha256 for s in load_manifest(again / split).shards]
    by_fraction, _ = run(tmp_path, lm_tokenizer, files, name="frac", val_fraction=0.25)
    assert by_fraction["val"]["documents"] == 5


def test_jsonl_parquet_and_blank_line_text_give_the_same_tokens(tmp_path, lm_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = documents(8, seed=4)
    _, from_txt = run(tmp_path, lm_tokenizer, write_text_files(tmp_path / "txt", docs), name="txt")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"id": i, "content": d}) + "\n" for i, d in enumerate(docs[:5])))
    pq.write_table(pa.table({"content": docs[5:], "n": list(range(3))}), tmp_path / "b.parquet")
    _, from_mixed = run(tmp_path, lm_tokenizer, [tmp_path / "a.jsonl", tmp_path / "*.parquet"], name="mixed",
                        text_key="content")
    (tmp_path / "all.txt").write_text("\n\n".join(docs))
    _, from_blocks = run(tmp_path, lm_tokenizer, [tmp_path / "all.txt"], name="blocks", txt_docs="blank-line")
    want = np.concatenate(samples(from_txt / "train"))
    for other in (from_mixed, from_blocks):
        assert np.array_equal(np.concatenate(samples(other / "train")), want)


def test_bad_input_costs_one_line(tmp_path, lm_tokenizer, capsys):
    (tmp_path / "a.jsonl").write_text(json.dumps({"content": "hello"}) + "\n")
    base = ["openelm", "tokenize", "--tokenizer", str(lm_tokenizer), "--out", str(tmp_path / "o"), "--seq-len", "8"]
    cases = [
        (["--input", str(tmp_path / "a.jsonl")], "a.jsonl:1: no key 'text' (keys: content); pass --text-key"),
        (["--input", str(tmp_path / "nothing*.txt")], "no such file, folder or matching files"),
        (["--input", str(tmp_path / "a.jsonl"), "--text-key", "content", "--val-docs", "1"], "cannot hold out 1"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("corefm: error:") and message in err[0], err
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"no column 'text' \(columns: body\)"):
        run(tmp_path, lm_tokenizer, [tmp_path / "c.parquet"])


def test_windowing_helpers():
    packer = Packer(3)
    windows = packer.add(np.arange(6)) + packer.add(np.arange(6, 9)) + packer.finish()
    assert [w.tolist() for w in windows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, -1, -1, -1]]
    assert [w.tolist() for w in chunk_pad(np.arange(5), 1)] == [[0, 1], [2, 3], [4, -1]]


def test_unigram_baseline_is_add_one_over_train_counts(tmp_path, lm_tokenizer):
    _, out = run(tmp_path, lm_tokenizer, write_text_files(tmp_path / "txt", documents(12, seed=5)), val_docs=3)
    train = np.concatenate(samples(out / "train"))
    counts = np.bincount(train[train >= 0], minlength=300)
    targets = np.concatenate([s[1:] for s in samples(out / "val")])
    targets = targets[targets >= 0]
    logp = np.log((counts[targets] + 1) / (counts.sum() + 300))
    result = unigram_perplexity(str(out / "train"), str(out / "val"))
    assert result["perplexity"] == pytest.approx(math.exp(-logp.mean()), rel=1e-9)
    assert result["val_tokens"] == len(targets) and result["vocab_size"] == 300
