"""OpenELM's tokenizer: LLaMA's SentencePiece vocabulary without the gated Hub repository.

The 32,000 LLaMA pieces (with scores and types) ship inside the ``llama-cpp-python==0.3.36``
source archive on PyPI as ``vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf``, beside
llama.cpp's reference tokenizations (``.inp`` texts, ``.out`` ids). :func:`build_llama_tokenizer`
turns that GGUF into ``tokenizer.model`` + HF tokenizer files. The vocabulary is under Meta's
LLaMA licence, so it is fetched with pip on demand and not stored in this repository.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as spm_pb

from corefm.data import pypi
from corefm.errors import ConfigError, CorefmError
from projects.openelm.gguf import read_gguf_metadata
from projects.openelm.spm import hf_tokenizer, spm_from_gguf, write_tokenizer_folder

# The files a release folder's tokenizer is made of (copied whole by the release writers).
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

LLAMA_SDIST = "llama-cpp-python==0.3.36"
GGUF_NAME = "ggml-vocab-llama-spm.gguf"
GGUF_MEMBER = f"vendor/llama.cpp/models/{GGUF_NAME}"
VOCAB_FILES = (GGUF_NAME, f"{GGUF_NAME}.inp", f"{GGUF_NAME}.out")
# sha256 of the GGUF in that archive: a different file is never silently turned into a tokenizer.
GGUF_SHA256 = "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69"
_TEST_SEPARATOR = "\n__ggml_vocab_test__\n"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extract_llama_vocab(sdist: str | Path, out_dir: str | Path) -> Path:
    """Copy the GGUF vocabulary and its reference files out of the sdist; return the GGUF path."""
    sdist, out = Path(sdist), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wanted = {name: None for name in VOCAB_FILES}
    try:
        with tarfile.open(sdist, "r:*") as tar:
            for member in tar:  # a streaming scan: stop as soon as the three files are out
                name = Path(member.name).name
                if member.isfile() and name in wanted and member.name.endswith(f"vendor/llama.cpp/models/{name}"):
                    data = tar.extractfile(member).read()
                    (out / name).write_bytes(data)
                    wanted[name] = True
                    if all(wanted.values()):
                        break
    except (tarfile.TarError, OSError) as e:
        raise CorefmError(f"{sdist}: cannot read the archive ({e})") from None
    if not wanted[GGUF_NAME]:
        raise CorefmError(f"{sdist} has no {GGUF_MEMBER} (expected the {LLAMA_SDIST} source archive)")
    return out / GGUF_NAME


def fetch_llama_vocab(cache_dir: str | Path | None = None) -> Path:
    """The cached GGUF vocabulary (downloading the sdist from PyPI with pip if needed)."""
    cache = Path(cache_dir) if cache_dir is not None else pypi.cache_dir() / "llama-spm"
    gguf = cache / GGUF_NAME
    if gguf.is_file() and all((cache / n).is_file() for n in VOCAB_FILES) and _sha256(gguf) == GGUF_SHA256:
        return gguf
    with tempfile.TemporaryDirectory() as tmp:
        extract_llama_vocab(pypi.download_sdist(LLAMA_SDIST, "llama_cpp_python-*.tar.gz", tmp), cache)
    if _sha256(gguf) != GGUF_SHA256:
        raise CorefmError(f"{gguf}: checksum differs from the pinned {LLAMA_SDIST} vocabulary")
    return gguf


def gguf_from_source(source: str | Path) -> Path:
    """source: a .gguf file, the llama-cpp-python sdist archive, or "pypi" (fetch and cache)."""
    if str(source) == "pypi":
        return fetch_llama_vocab()
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"--source {source}: no such file (give a .gguf, the {LLAMA_SDIST} sdist, or 'pypi')")
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        gguf = extract_llama_vocab(path, pypi.cache_dir() / "llama-spm")
        if _sha256(gguf) != GGUF_SHA256:
            raise CorefmError(f"{path}: its vocabulary differs from the pinned {LLAMA_SDIST} one")
        return gguf
    return path


def reference_tokenizations(gguf_path: str | Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's (text, ids without BOS) pairs stored beside a vocab GGUF; [] if absent."""
    inp, out = Path(f"{gguf_path}.inp"), Path(f"{gguf_path}.out")
    if not (inp.is_file() and out.is_file()):
        return []
    texts = inp.read_text(encoding="utf-8").split(_TEST_SEPARATOR)
    ids = out.read_text(encoding="utf-8").split("\n")
    # Both files end with a separator/newline, leaving one empty trailing entry.
    texts, ids = texts[:-1], ids[:-1]
    if len(texts) != len(ids):
        raise CorefmError(f"{inp} has {len(texts)} texts but {out} has {len(ids)} lines")
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, ids)]


def check_references(tokenizer, gguf_path: str | Path) -> tuple[int, list[str]]:
    """Encode every reference text (no special tokens); return (count, descriptions of mismatches)."""
    refs = reference_tokenizations(gguf_path)
    bad = []
    for text, want in refs:
        got = tokenizer.encode(text, add_special_tokens=False)
        if got != want:
            bad.append(f"{text[:30]!r}: got {got[:8]}, want {want[:8]}")
    return len(refs), bad


def build_llama_tokenizer(gguf_path: str | Path, out_dir: str | Path, add_bos_token: bool = True) -> Path:
    """Write tokenizer.model + tokenizer.json + tokenizer_config.json for the LLaMA vocabulary.

    gguf_path may also be the llama-cpp-python sdist or "pypi". ``AutoTokenizer.from_pretrained(out_dir)``
    then encodes "Hello world" as [1, 15043, 3186] (BOS first when add_bos_token).
    """
    gguf = gguf_from_source(gguf_path)
    proto = spm_from_gguf(read_gguf_metadata(gguf))
    write_tokenizer_folder(proto, out_dir, add_bos_token)
    return Path(out_dir)


def _read_spm(path: Path) -> spm_pb.ModelProto:
    proto = spm_pb.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf raises DecodeError (module path varies by version)
        raise ConfigError(f"{path} is not a SentencePiece model ({e})") from None
    if not proto.pieces:
        raise ConfigError(f"{path} is not a SentencePiece model (no pieces)")
    return proto


def load_tokenizer(path: str | Path, add_bos_token: bool = True):
    """A transformers fast tokenizer from a tokenizer.model, a GGUF vocabulary or an HF tokenizer folder."""
    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            # A release folder's config.json names OpenELM's custom code, which transformers reads before
            # the tokenizer: without an answer it asks in a terminal whether to run it (15 s). The
            # tokenizer is a built-in class and needs none of that code.
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        if (path / "tokenizer.model").is_file():
            return hf_tokenizer(_read_spm(path / "tokenizer.model"), add_bos_token)
        raise ConfigError(f"{path} holds neither tokenizer.json/tokenizer_config.json nor tokenizer.model")
    if not path.is_file():
        raise ConfigError(f"tokenizer {path}: no such file or folder")
    if path.suffix == ".gguf":
        return hf_tokenizer(spm_from_gguf(read_gguf_metadata(path)), add_bos_token)
    return hf_tokenizer(_read_spm(path), add_bos_token)


def train_sentencepiece(
    corpus_files: list[str | Path],
    vocab_size: int,
    out_dir: str | Path,
    model_type: str = "bpe",
    character_coverage: float = 0.99995,
    max_sentences: int = 10_000_000,
    seed: int = 0,
    add_bos_token: bool = True,
) -> Path:
    """Train a fresh SentencePiece model with LLaMA's settings; write tokenizer.model + HF files.

    One line of each corpus file is one training sentence. Settings as LLaMA: byte fallback
    (no <unk> on unseen characters), digits split, whitespace kept verbatim, ids unk=0 bos=1 eos=2.
    """
    import sentencepiece as spm

    files = [str(f) for f in corpus_files]
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise ConfigError(f"train_sentencepiece: corpus file(s) missing: {', '.join(missing) or '(none given)'}")
    if model_type not in ("bpe", "unigram"):
        raise ConfigError(f"model_type {model_type!r}: use 'bpe' or 'unigram'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            spm.SentencePieceTrainer.train(
                input=files, model_prefix=f"{tmp}/spm", vocab_size=vocab_size, model_type=model_type,
                character_coverage=character_coverage, byte_fallback=True, split_digits=True,
                allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
                normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                input_sentence_size=max_sentences, shuffle_input_sentence=True,
                num_threads=os.cpu_count() or 1, minloglevel=2,
            )
        except RuntimeError as e:
            # e.g. "Vocabulary size is too high": the corpus cannot support vocab_size pieces.
            raise ConfigError(f"sentencepiece training failed: {str(e).strip().splitlines()[-1]}") from None
        proto = _read_spm(Path(f"{tmp}/spm.model"))
    write_tokenizer_folder(proto, out, add_bos_token)
    return out

