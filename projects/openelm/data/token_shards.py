"""Token shards for causal LM training: ``corefm openelm tokenize``.

Text, JSONL and Parquet corpora (see :mod:`projects.openelm.data.sources`) become ``train/`` and
``val/`` shard sets whose samples hold ``tokens.npy``: an int32 array of ``seq_len + 1`` ids
(inputs are ``[:-1]``, targets ``[1:]``), where -1 marks padding that the LM task neither
attends to as a target nor counts. Each document is ``[BOS] + tokens + [EOS]`` (LLaMA adds a BOS
to every document; ``--no-bos`` / ``--no-eos`` drop them). Two layouts:

* ``pack``: the documents are joined into one stream, cut into consecutive non-overlapping
  windows of ``seq_len + 1``; only the last window is padded. Every token is stored once, and
  EOS/BOS mark where one document ends and the next begins inside a window.
* ``chunk-pad`` (CoreNet's): each document is cut on its own into windows of ``seq_len + 1`` and
  its last window padded, so no window mixes documents (padding only at a document's end).

The validation split is disjoint by document: ``--val-docs N`` or ``--val-fraction F`` picks
documents with a seeded permutation. The output is deterministic for the same inputs and
arguments; shards are written atomically by :class:`~corefm.data.ShardWriter`, and each
split's ``dataset.json`` records the tokenizer (sha256, vocabulary size, special ids), mode
and seq_len. The tokenizer is copied to ``OUT/tokenizer`` so the data set is self-contained.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from tqdm import tqdm

from corefm.data import DataError, ShardWriter
from projects.openelm.data.sources import TxtDocs, expand_inputs, iter_documents

VERSION = "1"
PAD = -1
Mode = Literal["pack", "chunk-pad"]
_BATCH_CHARS = 1 << 20  # tokenize about 1 MB of text per call (the fast tokenizer parallelises a batch)


@dataclass
class TokenizeConfig:
    inputs: list[str]
    tokenizer: str
    out: str
    seq_len: int
    mode: Mode = "pack"
    text_key: str = "text"
    txt_docs: TxtDocs = "file"
    val_fraction: float = 0.0
    val_docs: int = 0
    shard_samples: int = 1024
    # Deal the val samples round-robin into exactly this many shards (0: --shard-samples per shard),
    # so that every rank of a multi-process evaluation gets a shard of a small split.
    val_shards: int = 0
    seed: int = 0
    bos: bool = True
    eos: bool = True
    source: dict = field(default_factory=dict)  # free-form provenance added to the manifests

    def check(self) -> None:
        if self.seq_len < 1:
            raise DataError(f"--seq-len must be positive, got {self.seq_len}")
        if self.mode not in ("pack", "chunk-pad"):
            raise DataError(f"--mode {self.mode!r}: use 'pack' or 'chunk-pad'")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_docs < 0 or (self.val_docs and self.val_fraction):
            raise DataError("give either --val-docs N (N >= 0) or --val-fraction F, not both")
        if self.shard_samples < 1 or self.val_shards < 0:
            raise DataError(f"--shard-samples must be positive and --val-shards >= 0, got {self.shard_samples}, "
                            f"{self.val_shards}")


class Packer:
    """Joins documents into one stream and cuts it into (seq_len + 1)-token windows.

    ``add(tokens)`` returns the windows completed so far; ``finish()`` the padded remainder.
    """

    def __init__(self, seq_len: int) -> None:
        self.width = seq_len + 1
        self.buf = np.zeros(0, dtype=np.int32)

    def add(self, tokens: np.ndarray) -> list[np.ndarray]:
        self.buf = np.concatenate([self.buf, tokens.astype(np.int32, copy=False)])
        n = len(self.buf) // self.width
        out = [self.buf[i * self.width:(i + 1) * self.width].copy() for i in range(n)]
        self.buf = self.buf[n * self.width:]
        return out

    def finish(self) -> list[np.ndarray]:
        if not len(self.buf):
            return []
        tail = np.full(self.width, PAD, dtype=np.int32)
        tail[: len(self.buf)] = self.buf
        self.buf = np.zeros(0, dtype=np.int32)
        return [tail]


def chunk_pad(tokens: np.ndarray, seq_len: int) -> list[np.ndarray]:
    """One document (n,) -> ceil(n / (seq_len + 1)) windows, the last right-padded with -1."""
    width = seq_len + 1
    out = []
    for start in range(0, len(tokens), width):
        window = np.full(width, PAD, dtype=np.int32)
        piece = tokens[start:start + width]
        window[: len(piece)] = piece
        out.append(window)
    return out


def choose_val(num_docs: int, val_fraction: float, val_docs: int, seed: int) -> set[int]:
    """Indices of the validation documents: a seeded choice of val_docs or round(fraction * N) (>= 1)."""
    n_val = val_docs or (max(1, round(val_fraction * num_docs)) if val_fraction > 0 else 0)
    if n_val and n_val >= num_docs:
        raise DataError(f"the corpus has {num_docs} document(s): cannot hold out {n_val} for validation "
                        "and keep any for training")
    if not n_val:
        return set()
    return {int(i) for i in np.random.default_rng(seed).choice(num_docs, size=n_val, replace=False)}


def prepare_tokenizer(source: str, out_dir: Path):
    """Copy/build the tokenizer into ``out_dir`` (HF files); return (tokenizer, manifest record)."""
    from projects.openelm.convert import TOKENIZER_FILES
    from projects.openelm.gguf import read_gguf_metadata
    from projects.openelm.spm import spm_from_gguf, write_tokenizer_folder
    from projects.openelm.tokenizer import _read_spm, load_tokenizer

    src = Path(source)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if src.is_dir():
        found = [src / n for n in TOKENIZER_FILES if (src / n).is_file()]
        if not found:
            raise DataError(f"--tokenizer {src}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
        for f in found:
            shutil.copyfile(f, out_dir / f.name)
    elif src.is_file():
        proto = spm_from_gguf(read_gguf_metadata(src)) if src.suffix == ".gguf" else _read_spm(src)
        write_tokenizer_folder(proto, out_dir)
    else:
        raise DataError(f"--tokenizer {src}: no such file or folder")
    tokenizer = load_tokenizer(out_dir)
    canonical = out_dir / ("tokenizer.json" if (out_dir / "tokenizer.json").is_file() else "tokenizer.model")
    record = {"path": "../tokenizer", "source": str(src), "file": canonical.name,
              "sha256": hashlib.sha256(canonical.read_bytes()).hexdigest(), "vocab_size": len(tokenizer),
              "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    return tokenizer, record


def _token_batches(docs: Iterator[tuple[int, str, str]], tokenizer) -> Iterator[tuple[int, str, list[int]]]:
    """(index, doc_id, text) -> (index, doc_id, ids without special tokens), tokenized in ~1 MB batches."""
    batch: list[tuple[int, str, str]] = []
    chars = 0

    def flush():
        ids = tokenizer([t for _, _, t in batch], add_special_tokens=False)["input_ids"]
        return [(i, d, x) for (i, d, _), x in zip(batch, ids)]

    for item in docs:
        batch.append(item)
        chars += len(item[2])
        if chars >= _BATCH_CHARS or len(batch) >= 1024:
            yield from flush()
            batch, chars = [], 0
    if batch:
        yield from flush()


class _Split:
    """One output split: its writer, packer and counts."""

    def __init__(self, name: str, out: Path, cfg: TokenizeConfig, producer: dict) -> None:
        self.name = name
        num_shards = cfg.val_shards if name == "val" and cfg.val_shards else None
        self.writer = ShardWriter(out, prefix=name, max_samples_per_shard=cfg.shard_samples,
                                  producer={**producer, "split": name}, num_shards=num_shards)
        self.packer = Packer(cfg.seq_len) if cfg.mode == "pack" else None
        self.seq_len = cfg.seq_len
        self.docs = self.tokens = self.samples = 0
        self.doc_ids: list[str] = []

    def add(self, doc_id: str, tokens: np.ndarray) -> None:
        self.docs += 1
        self.tokens += len(tokens)
        if len(self.doc_ids) <= 1000:
            self.doc_ids.append(doc_id)
        windows = self.packer.add(tokens) if self.packer else chunk_pad(tokens, self.seq_len)
        self._write(windows)

    def _write(self, windows: list[np.ndarray]) -> None:
        for w in windows:
            self.writer.write({"__key__": f"{self.name}-{self.samples:09d}", "tokens.npy": w})
            self.samples += 1

    def close(self) -> dict:
        if self.packer:
            self._write(self.packer.finish())
        summary = {"documents": self.docs, "tokens": self.tokens, "samples": self.samples,
                   "padding": self.samples * (self.seq_len + 1) - self.tokens}
        self.writer.producer.update(summary)
        if self.name == "val" and self.docs <= 1000:  # small enough to list: lets anyone check disjointness
            self.writer.producer["doc_ids"] = self.doc_ids
        if self.writer.num_shards and self.samples < self.writer.num_shards:
            self.writer.abort()
            raise DataError(f"the {self.name} split has {self.samples} sample(s), fewer than --val-shards "
                            f"{self.writer.num_shards}: hold out more documents or lower --val-shards")
        shards = self.writer.close()
        return {**summary, "shards": len(shards), "path": self.writer.out_dir}


def tokenize_corpus(cfg: TokenizeConfig) -> dict[str, dict]:
    """Write ``cfg.out/{train,val}`` shard sets (+ ``cfg.out/tokenizer``); returns per-split counts."""
    cfg.check()
    out = Path(cfg.out)
    files = expand_inputs(cfg.inputs)
    tokenizer, tok_record = prepare_tokenizer(cfg.tokenizer, out / "tokenizer")
    bos, eos = tok_record["bos_token_id"], tok_record["eos_token_id"]
    if (cfg.bos and bos is None) or (cfg.eos and eos is None):
        raise DataError(f"tokenizer {cfg.tokenizer} has no {'BOS' if cfg.bos and bos is None else 'EOS'} "
                        "token; pass --no-bos / --no-eos")
    # Pass 1 only counts documents (no tokenizing), so an exact number can be held out.
    stats: dict[str, int] = {}
    num_docs = sum(1 for _ in iter_documents(files, cfg.text_key, cfg.txt_docs, stats))
    if num_docs == 0:
        raise DataError(f"no non-empty documents in {len(files)} input file(s)")
    val = choose_val(num_docs, cfg.val_fraction, cfg.val_docs, cfg.seed)
    args = {k: v for k, v in asdict(cfg).items() if k not in ("out", "source")}
    producer = {"name": "projects.openelm.data.token_shards", "version": VERSION, "args": args, "tokenizer": tok_record,
                "mode": cfg.mode, "seq_len": cfg.seq_len, "pad_id": PAD, "input_files": len(files),
                "empty_documents_skipped": stats.get("empty", 0), **cfg.source}
    splits = {"train": _Split("train", out / "train", cfg, producer)}
    if val:
        splits["val"] = _Split("val", out / "val", cfg, producer)
    head = [bos] if cfg.bos else []
    tail = [eos] if cfg.eos else []
    docs = ((i, d, t) for i, (d, t) in enumerate(iter_documents(files, cfg.text_key, cfg.txt_docs)))
    try:
        for index, doc_id, ids in tqdm(_token_batches(docs, tokenizer), total=num_docs, desc="tokenize",
                                       unit="doc"):
            tokens = np.asarray(head + ids + tail, dtype=np.int32)
            splits["val" if index in val else "train"].add(doc_id, tokens)
    except BaseException:
        for split in splits.values():
            split.writer.abort()
        raise
    return {name: split.close() for name, split in splits.items()}
