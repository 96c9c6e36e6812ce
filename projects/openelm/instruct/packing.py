"""Packed chat shards: ``corefm openelm instruct-pack``, and the masks that keep examples apart.

Several tokenized conversations share one row of ``seq_len`` tokens. A shard sample holds three
int32 arrays of that length:

* ``tokens.npy``: the ids, examples back to back, the rest padding (id 0);
* ``labels.npy``: the id on response tokens, -100 elsewhere (prompt, template, padding);
* ``segments.npy``: 1, 2, ... for the row's first, second, ... example; 0 on padding.

In the model, a token attends only to earlier tokens of its own segment (:func:`segment_mask`,
a block-diagonal causal mask) and its RoPE position counts from its example's first token
(:func:`segment_positions`), so every example computes exactly what it computes alone. The
loss target of position t is labels[t + 1] only while t + 1 is in the same segment
(:func:`next_token_targets`): no example predicts the next one's first token. The same three
arrays drive the Hugging Face model (4-D ``attention_mask`` + ``position_ids``).

Rows are filled first-fit in a seeded order (an example goes into the first open row it fits);
an example longer than ``seq_len`` is dropped and counted, never cut (a truncated reply would
teach the model to stop mid-sentence without its ``</s>``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from corefm.data import DataError, ShardWriter
from projects.openelm.instruct.chat import (
    IGNORE,
    check_messages,
    encode_chats,
    load_chat_tokenizer,
    tokenizer_record,
    write_chat_tokenizer,
)

VERSION = "1"
PAD_ID = 0
_OPEN_ROWS = 64  # rows kept open for first-fit; the fullest is closed when one more is needed


@dataclass
class PackStats:
    examples: int = 0
    dropped_too_long: int = 0
    rows: int = 0
    tokens: int = 0
    response_tokens: int = 0

    def as_dict(self, seq_len: int) -> dict:
        fill = self.tokens / max(1, self.rows * seq_len)
        return {"examples": self.examples, "dropped_too_long": self.dropped_too_long, "rows": self.rows,
                "tokens": self.tokens, "response_tokens": self.response_tokens, "fill": round(fill, 4)}


def pack_rows(examples: list[tuple[list[int], list[int]]], seq_len: int,
              stats: PackStats | None = None) -> list[dict[str, np.ndarray]]:
    """[(ids, labels)] -> rows {"tokens", "labels", "segments"} (int32, length seq_len), first-fit."""
    stats = stats if stats is not None else PackStats()
    open_rows: list[list[tuple[list[int], list[int]]]] = []
    room: list[int] = []
    done: list[list[tuple[list[int], list[int]]]] = []
    for ids, labels in examples:
        if len(ids) != len(labels) or not ids:
            raise DataError(f"an example has {len(ids)} ids and {len(labels)} labels")
        if len(ids) > seq_len:
            stats.dropped_too_long += 1
            continue
        stats.examples += 1
        slot = next((i for i, r in enumerate(room) if r >= len(ids)), None)
        if slot is None:
            if len(open_rows) >= _OPEN_ROWS:
                fullest = min(range(len(room)), key=room.__getitem__)
                done.append(open_rows.pop(fullest))
                room.pop(fullest)
            open_rows.append([])
            room.append(seq_len)
            slot = len(open_rows) - 1
        open_rows[slot].append((ids, labels))
        room[slot] -= len(ids)
    done.extend(open_rows)
    rows = []
    for parts in done:
        tokens = np.full(seq_len, PAD_ID, dtype=np.int32)
        labels = np.full(seq_len, IGNORE, dtype=np.int32)
        segments = np.zeros(seq_len, dtype=np.int32)
        at = 0
        for seg, (ids, lab) in enumerate(parts, start=1):
            tokens[at:at + len(ids)] = ids
            labels[at:at + len(ids)] = lab
            segments[at:at + len(ids)] = seg
            at += len(ids)
        stats.tokens += at
        stats.response_tokens += int((labels != IGNORE).sum())
        rows.append({"tokens": tokens, "labels": labels, "segments": segments})
    stats.rows += len(rows)
    return rows


def read_conversations(path: str | Path) -> list[list[dict]]:
    """The ``messages`` of every line of a JSONL file (checked)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (give a JSONL file of {{\"messages\": [...]}} lines)")
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
            messages = record.get("messages") if isinstance(record, dict) else None
            check_messages(messages, f"{path}:{n}")
            out.append(messages)
    if not out:
        raise DataError(f"{path}: no conversations")
    return out


def pack_split(name: str, source: Path, tokenizer, out: Path, seq_len: int, shards: int, seed: int,
               producer: dict, batch: int = 4096) -> dict:
    conversations = read_conversations(source)
    random.Random(f"{seed}-{name}").shuffle(conversations)
    encoded: list[tuple[list[int], list[int]]] = []
    for start in tqdm(range(0, len(conversations), batch), desc=f"tokenize {name}", unit="batch"):
        encoded.extend(encode_chats(tokenizer, conversations[start:start + batch]))
    stats = PackStats()
    rows = pack_rows(encoded, seq_len, stats)
    if not rows:
        raise DataError(f"{source}: every conversation is longer than --seq-len {seq_len}")
    summary = stats.as_dict(seq_len)
    shards = min(shards, len(rows))
    writer = ShardWriter(out / name, prefix=name, num_shards=shards,
                         producer={**producer, "split": name, "source": str(source), **summary})
    with writer:
        for i, row in enumerate(rows):
            writer.write({"__key__": f"{name}-{i:09d}", "tokens.npy": row["tokens"], "labels.npy": row["labels"],
                          "segments.npy": row["segments"]})
    return {**summary, "shards": shards, "path": str(out / name)}


def pack_chat_data(train: str | Path, val: str | Path | None, tokenizer_dir: str | Path, out: str | Path,
                   seq_len: int, train_shards: int = 8, val_shards: int = 2, seed: int = 0,
                   template_file: str | Path | None = None) -> dict[str, dict]:
    """Write OUT/tokenizer (with the chat template), OUT/train and OUT/val packed shard sets."""
    if seq_len < 8:
        raise DataError(f"--seq-len must be at least 8, got {seq_len}")
    if train_shards < 1 or val_shards < 1:
        raise DataError("--train-shards and --val-shards must be positive")
    out = Path(out)
    from projects.openelm.instruct.chat import CHAT_TEMPLATE

    template = CHAT_TEMPLATE
    if template_file:
        if not Path(template_file).is_file():
            raise DataError(f"--chat-template {template_file}: no such file")
        template = Path(template_file).read_text()
    tok_dir = write_chat_tokenizer(tokenizer_dir, out / "tokenizer", template)
    tokenizer = load_chat_tokenizer(tok_dir)
    producer = {"name": "projects.openelm.instruct.packing", "version": VERSION, "seq_len": seq_len,
                "layout": {"tokens.npy": "ids, padding 0", "labels.npy": "response ids, -100 elsewhere",
                           "segments.npy": "example 1..k within the row, 0 = padding"},
                "tokenizer": {**tokenizer_record(tok_dir), "source": str(tokenizer_dir)}, "seed": seed}
    result = {"train": pack_split("train", Path(train), tokenizer, out, seq_len, train_shards, seed, producer)}
    if val:
        result["val"] = pack_split("val", Path(val), tokenizer, out, seq_len, val_shards, seed, producer)
    return result


# --- what the model and the loss do with the three arrays -------------------------------------------------
def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """segments (B, T) -> bool (B, 1, T, T): query i may attend key j iff j <= i and both are in one segment."""
    t = segments.shape[-1]
    same = segments[:, :, None] == segments[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    return (same & causal)[:, None]


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """segments (B, T) -> positions (B, T) long: 0, 1, ... from each segment's first token."""
    t = segments.shape[-1]
    idx = torch.arange(t, device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=-1).values
    return idx - first


def next_token_targets(labels: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """The loss target of every position: labels[t + 1] where t + 1 is a response token of t's own
    (non-padding) segment, else -100."""
    targets = torch.full_like(labels, IGNORE)
    same = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
    targets[:, :-1] = torch.where(same, labels[:, 1:], torch.full_like(labels[:, 1:], IGNORE))
    return targets
