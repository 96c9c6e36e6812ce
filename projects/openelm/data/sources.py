"""Documents out of text corpora: plain text, JSON Lines and Parquet files, by path, folder or glob.

A document is ``(doc_id, text)``; ``doc_id`` names where it came from (``path`` for a whole file,
``path#i`` for the i-th document of a file), so a validation split can be listed and checked.

* ``.txt`` (and any other suffix): one document per file, or per blank-line-separated block
  (``txt_docs="blank-line"``).
* ``.jsonl`` / ``.jsonl.gz``: one JSON object per line, text under ``text_key``.
* ``.parquet``: text in column ``text_key`` (read in record batches, never the whole file).

Empty or whitespace-only documents are skipped (and counted); anything else malformed is a
:class:`~corefm.data.DataError` naming the file and line or column.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
from pathlib import Path
from typing import Iterator, Literal

from corefm.data import DataError

TxtDocs = Literal["file", "blank-line"]
_BLOCK_SPLIT = re.compile(r"\n[ \t\r\f\v]*\n")


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named by paths, folders (all files below, sorted) and globs, in the given order.

    A pattern that names nothing is an error rather than a silently smaller corpus.
    """
    files: list[Path] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(p for p in Path(pattern).rglob("*") if p.is_file() and not p.name.startswith("."))
        elif os.path.isfile(pattern):
            found = [Path(pattern)]
        else:
            found = [Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if os.path.isfile(p)]
        if not found:
            raise DataError(f"--input {pattern}: no such file, folder or matching files")
        files.extend(found)
    seen: set[Path] = set()
    unique = []
    for f in files:  # the same file named twice would put its documents in both splits' candidates
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "txt"


def _txt_documents(path: Path, txt_docs: TxtDocs) -> Iterator[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); convert it or pass it as JSONL/Parquet") from None
    text = text.replace("\r\n", "\n")
    if txt_docs == "file":
        yield str(path), text
        return
    for i, block in enumerate(_BLOCK_SPLIT.split(text)):
        yield f"{path}#{i}", block


def _text_value(value: object, where: str, text_key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: '{text_key}' holds {type(value).__name__}, not text")
    return value


def _jsonl_documents(path: Path, text_key: str) -> Iterator[tuple[str, str]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if text_key not in record:
                raise DataError(f"{where}: no key '{text_key}' (keys: {', '.join(sorted(record)) or 'none'}); "
                                "pass --text-key")
            yield f"{path}#{lineno - 1}", _text_value(record[text_key], where, text_key)


def _parquet_documents(path: Path, text_key: str) -> Iterator[tuple[str, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-Parquet files
        raise DataError(f"{path}: not a Parquet file ({str(e).splitlines()[0]})") from None
    columns = pf.schema_arrow.names
    if text_key not in columns:
        raise DataError(f"{path}: no column '{text_key}' (columns: {', '.join(columns)}); pass --text-key")
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=[text_key]):
        for value in batch.column(0).to_pylist():
            yield f"{path}#{row}", _text_value(value, f"{path} row {row}", text_key)
            row += 1


def iter_documents(files: list[Path], text_key: str = "text", txt_docs: TxtDocs = "file",
                   stats: dict[str, int] | None = None) -> Iterator[tuple[str, str]]:
    """Every non-empty document of ``files`` in order; ``stats["empty"]`` counts the skipped ones."""
    if txt_docs not in ("file", "blank-line"):
        raise DataError(f"--txt-docs {txt_docs!r}: use 'file' or 'blank-line'")
    for path in files:
        kind = file_kind(path)
        if kind == "jsonl":
            docs = _jsonl_documents(path, text_key)
        elif kind == "parquet":
            docs = _parquet_documents(path, text_key)
        else:
            docs = _txt_documents(path, txt_docs)
        for doc_id, text in docs:
            if text.strip():
                yield doc_id, text
            elif stats is not None:
                stats["empty"] = stats.get("empty", 0) + 1
