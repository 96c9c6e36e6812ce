"""Shard specs -> shard URLs.

A spec is one or more sources separated by `::`; a source is one or more patterns separated by
`,` (commas inside braces belong to the brace pattern). A pattern is a brace pattern
(`train-{000000..000007}.tar`), a directory holding `dataset.json` (all of its shards, or one
split with `dir#val`), a path to a `dataset.json`, or a `pipe:`/http(s)/other URL kept as is.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import braceexpand

from corefm.data.errors import DataError
from corefm.data.manifest import MANIFEST_NAME, load_manifest


def is_local(url: str) -> bool:
    """True for plain paths and `file:` URLs (the ones we can stat cheaply)."""
    scheme = urlparse(url).scheme
    # one-letter "schemes" are Windows drive letters
    return scheme in ("", "file") or len(scheme) == 1


def local_path(url: str) -> str:
    """The filesystem path of a local URL (`file:` prefix removed)."""
    return urlparse(url).path if url.startswith("file:") else url


def split_top_level(text: str, sep: str) -> list[str]:
    """Split `text` on `sep` outside `{...}`; empty pieces are dropped (after stripping)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _manifest_shards(pattern: str) -> list[str] | None:
    """Shard paths listed by the manifest that `pattern` names, or None if it names none."""
    path, _, split = pattern.partition("#")
    if not is_local(path):
        return None
    path = local_path(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, MANIFEST_NAME)):
            raise DataError(
                f"directory {path} has no {MANIFEST_NAME}: pass a shard pattern such as "
                f"{os.path.join(path, 'train-{000000..000009}.tar')} instead"
            )
    elif not (os.path.basename(path) == MANIFEST_NAME and os.path.isfile(path)):
        return None
    manifest = load_manifest(path)
    names = manifest.split_names(split) if split else [s.name for s in manifest.shards]
    return [os.path.join(manifest.dir, name) for name in names]


def expand_sources(spec: str) -> list[list[str]]:
    """Expand a spec into one URL list per `::`-separated source.

    Raises DataError for an empty spec, a source that expands to nothing, or a missing local
    file (remote and `pipe:` URLs are not checked here: a missing one is a skipped shard).
    """
    sources = split_top_level(spec or "", "::")
    if not sources:
        raise DataError("no shards given: the shard spec is empty")
    out = []
    for source in sources:
        urls: list[str] = []
        for pattern in split_top_level(source, ","):
            for item in braceexpand.braceexpand(pattern):
                listed = _manifest_shards(item)  # `data/{a,b}` may name two shard directories
                urls.extend(listed if listed is not None else [item])
        if not urls:
            raise DataError(f"shard spec {source!r} names no shards")
        missing = [u for u in urls if is_local(u) and not os.path.isfile(local_path(u))]
        if missing:
            more = f" (and {len(missing) - 1} more of {len(urls)})" if len(missing) > 1 else ""
            raise DataError(f"shard not found: {missing[0]}{more}")
        out.append(urls)
    return out


def expand_urls(spec: str) -> list[str]:
    """Expand a spec into a flat list of shard URLs (all sources concatenated, in order)."""
    return [url for source in expand_sources(spec) for url in source]
