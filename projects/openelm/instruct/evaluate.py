"""Held-out response loss of any OpenELM folder: ``corefm openelm instruct-eval``.

The same measure as the ``instruct_lm`` task's evaluation (mean negative log-likelihood of the
response tokens of packed ``instruct-pack`` shards, each example masked off from the others), for
a base release, a merged release or a peft adapter folder, in fp32 on one process, so a base
model and its tuned version are scored on exactly the same tokens by the same code.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from corefm.data import DataError, expand_urls
from corefm.data.shards import iter_shard
from corefm.tasks.lm_loss import eval_sums
from projects.openelm.instruct.model import packed_logits
from projects.openelm.instruct.packing import next_token_targets
from projects.openelm.instruct.task import FIELDS, InstructLMConfig, InstructLMTask


def packed_rows(data: str) -> list[dict[str, torch.Tensor]]:
    """Every row of a packed shard set (a folder with dataset.json, or a shard spec), decoded and checked."""
    from corefm.data.errors import SkipSample, one_line
    from corefm.data.shards import READ_ERRORS

    try:
        urls = expand_urls(data)
    except DataError as e:
        raise DataError(f"--data {data}: {e}") from None
    transform = InstructLMTask(InstructLMConfig(), torch.nn.Module()).sample_transform(False)
    rows = []
    for url in urls:
        try:
            for sample in iter_shard(url):
                rows.append(transform(sample))
        except SkipSample as e:
            raise DataError(f"--data {data}: {e} (not `corefm openelm instruct-pack` shards?)") from None
        except READ_ERRORS as e:
            raise DataError(f"--data {data}: {url} cannot be read ({one_line(e)})") from None
    if not rows:
        raise DataError(f"--data {data}: no rows")
    return rows


@torch.no_grad()
def response_loss(model: torch.nn.Module, rows: list[dict[str, torch.Tensor]], batch_size: int = 16) -> dict:
    """{"loss", "perplexity", "token_accuracy", "tokens"} of a corefm OpenELM over packed rows."""
    model.eval()
    nll = torch.zeros((), dtype=torch.float64)
    count = correct = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = {k: torch.stack([r[k] for r in chunk]) for k in FIELDS}
        if int(batch["tokens"].max()) >= model.vocab_size:
            raise DataError(f"token ids reach {int(batch['tokens'].max())}, beyond the model's vocabulary "
                            f"({model.vocab_size}): the data were packed with another tokenizer")
        logits = packed_logits(model, batch["tokens"], batch["segments"])
        s, c, k = eval_sums(logits, next_token_targets(batch["labels"], batch["segments"]))
        nll += s
        count += int(c)
        correct += int(k)
    loss = float(nll) / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": correct / max(count, 1),
            "tokens": count}


def evaluate_folder(folder: str | Path, data: str, batch_size: int = 16, base: str = "") -> dict:
    from projects.openelm.instruct.release import load_model_folder

    model, _ = load_model_folder(folder, base=base)
    return response_loss(model, packed_rows(data), batch_size)
