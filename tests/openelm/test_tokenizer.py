"""LLaMA tokenizer rebuilt from the GGUF vocabulary, user tokenizers, and SentencePiece training."""

from __future__ import annotations

import argparse
import random
import struct
import tarfile

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from corefm.errors import CheckpointError, ConfigError, CorefmError
from projects.openelm.cli import add_tokenizer_cli
from projects.openelm.gguf import read_gguf_metadata
from projects.openelm.spm import spm_from_gguf
from projects.openelm.tokenizer import (VOCAB_FILES, build_llama_tokenizer, extract_llama_vocab, fetch_llama_vocab,
                                        load_tokenizer, reference_tokenizations, train_sentencepiece)

# Letters, runs of spaces, newlines/tabs, digits, punctuation, accents, CJK, emoji and a ZWJ.
ALPHABET = list("abcdefghijklmnop ABCDE   \n\t0123456789.,!?'-éüß日本") + ["🦙", "😀", "\u200d"]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(n)]


@pytest.fixture(scope="session")
def llama_gguf():
    """The LLaMA vocabulary GGUF from the llama-cpp-python sdist, cached under ~/.cache/corefm
    ($COREFM_CACHE); it is Meta-licensed, so it is fetched with pip rather than stored here."""
    try:
        return fetch_llama_vocab()
    except CorefmError as e:
        if "pip could not download" in str(e):
            pytest.skip(f"LLaMA vocabulary not cached and PyPI is unreachable ({e})")
        raise


@pytest.fixture(scope="session")
def llama_dir(llama_gguf, tmp_path_factory):
    return build_llama_tokenizer(llama_gguf, tmp_path_factory.mktemp("llama_tok"))


def test_all_reference_tokenizations_match(llama_gguf, llama_dir):
    refs = reference_tokenizations(llama_gguf)
    assert len(refs) == 46
    hf = AutoTokenizer.from_pretrained(llama_dir)
    sp = spm.SentencePieceProcessor(model_file=str(llama_dir / "tokenizer.model"))
    assert len(hf) == sp.get_piece_size() == 32000
    for text, want in refs:
        assert hf.encode(text, add_special_tokens=False) == want, repr(text)
        assert sp.encode(text) == want, repr(text)
    assert ("Hello world", [15043, 3186]) in refs and (" Hello world", [29871, 15043, 3186]) in refs
    assert hf("Hello world").input_ids == [1, 15043, 3186]  # add_bos_token=True, as OpenELM was evaluated
    assert (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (1, 2, 0)


def test_hf_and_sentencepiece_agree_on_random_text(llama_dir):
    hf = AutoTokenizer.from_pretrained(llama_dir)
    sp = spm.SentencePieceProcessor(model_file=str(llama_dir / "tokenizer.model"))
    for text in random_texts(300):
        ids = sp.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, repr(text)
        assert hf.decode(ids) == sp.decode(ids), repr(text)


def test_load_tokenizer_accepts_model_file_gguf_and_folders(llama_gguf, llama_dir, tmp_path):
    only_model = tmp_path / "spm_only"
    only_model.mkdir()
    (only_model / "tokenizer.model").write_bytes((llama_dir / "tokenizer.model").read_bytes())
    texts = random_texts(40, seed=1) + ["Hello world", " Hello"]
    reference = AutoTokenizer.from_pretrained(llama_dir)
    want = [reference(t).input_ids for t in texts]
    for source in (llama_dir, llama_dir / "tokenizer.model", llama_gguf, only_model):
        tok = load_tokenizer(source)
        assert [tok(t).input_ids for t in texts] == want, source
    assert load_tokenizer(llama_dir / "tokenizer.model", add_bos_token=False)("Hello world").input_ids == [15043, 3186]
    (tmp_path / "junk.model").write_bytes(b"\x00not a model")
    with pytest.raises(ConfigError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model")
    with pytest.raises(ConfigError, match="no such file"):
        load_tokenizer(tmp_path / "missing")


def test_extract_from_an_sdist_archive(llama_gguf, tmp_path):
    archive = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path, arcname="llama_cpp_python-0.3.36/README.md", recursive=False)
        for name in VOCAB_FILES:
            tar.add(llama_gguf.parent / name, arcname=f"llama_cpp_python-0.3.36/vendor/llama.cpp/models/{name}")
    gguf = extract_llama_vocab(archive, tmp_path / "out")
    assert gguf.read_bytes() == llama_gguf.read_bytes()
    assert len(reference_tokenizations(gguf)) == 46
    empty = tmp_path / "other.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        tar.add(archive, arcname="pkg/file.tar.gz")
    with pytest.raises(CorefmError, match="has no vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"):
        extract_llama_vocab(empty, tmp_path / "out2")


def _gguf_bytes(model: str = "llama") -> bytes:
    """A small GGUF v3 vocabulary written by hand (string, array and scalar values)."""
    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    tokens = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "\u2581ab"]
    kv = [
        s("general.architecture") + struct.pack("<I", 8) + s("llama"),
        s("tokenizer.ggml.model") + struct.pack("<I", 8) + s(model),
        s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, len(tokens)) + b"".join(s(t) for t in tokens),
        s("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, 8) + struct.pack("<8f", 0, 0, 0, -1, -2, -3, -4, -5),
        s("tokenizer.ggml.token_type") + struct.pack("<IIQ", 9, 5, 8) + struct.pack("<8i", 2, 3, 3, 1, 1, 1, 1, 1),
        s("tokenizer.ggml.bos_token_id") + struct.pack("<II", 4, 1),
        s("tokenizer.ggml.add_bos_token") + struct.pack("<I?", 7, True),
    ]
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + b"".join(kv)


def test_gguf_reader_and_its_errors(tmp_path):
    path = tmp_path / "v.gguf"
    path.write_bytes(_gguf_bytes())
    meta = read_gguf_metadata(path)
    assert meta["tokenizer.ggml.tokens"][6] == "\u2581a" and meta["tokenizer.ggml.scores"][7] == -5.0
    assert meta["tokenizer.ggml.token_type"] == [2, 3, 3, 1, 1, 1, 1, 1] and meta["tokenizer.ggml.add_bos_token"]
    proto = spm_from_gguf(meta)
    assert [p.piece for p in proto.pieces] == meta["tokenizer.ggml.tokens"] and proto.trainer_spec.bos_id == 1
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    for text, want in (("ab", [7]), ("a", [6]), ("ba b", [3, 5, 4, 3, 5]), ("a ab", [6, 7])):
        assert sp.encode(text) == want and load_tokenizer(path).encode(text, add_special_tokens=False) == want
    (tmp_path / "bad.gguf").write_bytes(b"GGML" + bytes(20))
    with pytest.raises(CheckpointError, match="bad magic"):
        read_gguf_metadata(tmp_path / "bad.gguf")
    (tmp_path / "short.gguf").write_bytes(_gguf_bytes()[:60])
    with pytest.raises(CheckpointError, match="truncated"):
        read_gguf_metadata(tmp_path / "short.gguf")
    (tmp_path / "gpt2.gguf").write_bytes(_gguf_bytes("gpt2"))
    with pytest.raises(ConfigError, match="only 'llama'"):
        spm_from_gguf(read_gguf_metadata(tmp_path / "gpt2.gguf"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sta", "tor", "ve", "qui", "ph", "é", "ng"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) + rng.choice(["", " 2024", ".", "  !"])
             for _ in range(4000)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines[:3500]))
    return path, lines[3500:]


@pytest.mark.parametrize("model_type,vocab", [("bpe", 400), ("unigram", 350)])
def test_train_sentencepiece_and_hf_files_agree(corpus, tmp_path, model_type, vocab):
    path, held_out = corpus
    out = train_sentencepiece([path], vocab, tmp_path / "tok", model_type=model_type)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    hf = AutoTokenizer.from_pretrained(out)
    assert sp.get_piece_size() == vocab and len(hf) == vocab
    for text in held_out[:200] + ["日本 🦙 unseen", "  two  spaces ", "", "x\ny"]:
        ids = sp.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, repr(text)
        assert hf.decode(ids) == sp.decode(ids) == text
    assert 0 not in sp.encode("日本 🦙")  # byte fallback: unseen characters never become <unk>
    assert hf(held_out[0]).input_ids[0] == 1
    assert len(sp.encode(held_out[0])) < len(held_out[0]) / 2  # it learned multi-character pieces


def test_train_sentencepiece_bad_input_is_one_line(corpus, tmp_path):
    path, _ = corpus
    with pytest.raises(ConfigError, match="Vocabulary size") as e:
        train_sentencepiece([path], 100_000, tmp_path / "big")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="missing"):
        train_sentencepiece([tmp_path / "nope.txt"], 300, tmp_path / "x")


def test_cli_commands(llama_gguf, corpus, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    data = parser.add_subparsers(dest="command").add_parser("openelm").add_subparsers(dest="openelm_command")
    add_tokenizer_cli(data)
    args = parser.parse_args(["openelm", "llama-tokenizer", "--source", str(llama_gguf), "--out", str(tmp_path / "l")])
    assert args.func(args) == 0
    assert "46/46 llama.cpp reference tokenizations match" in capsys.readouterr().out
    assert AutoTokenizer.from_pretrained(tmp_path / "l")("Hello world").input_ids == [1, 15043, 3186]
    args = parser.parse_args(["openelm", "train-tokenizer", "--input", str(corpus[0]), "--vocab-size", "300",
                              "--out", str(tmp_path / "t")])
    assert args.func(args) == 0 and (tmp_path / "t" / "tokenizer.json").is_file()
    with pytest.raises(ConfigError, match="no such file"):
        args = parser.parse_args(["openelm", "llama-tokenizer", "--source", str(tmp_path / "x.gguf"), "--out", "o"])
        args.func(args)


def test_reference_file_parser_handles_empty_texts(tmp_path):
    gguf = tmp_path / "v.gguf"
    (tmp_path / "v.gguf.inp").write_text("a\n__ggml_vocab_test__\n\n__ggml_vocab_test__\n", encoding="utf-8")
    (tmp_path / "v.gguf.out").write_text(" 1 2\n\n")
    assert reference_tokenizations(gguf) == [("a", [1, 2]), ("", [])]
    assert reference_tokenizations(tmp_path / "other.gguf") == []
