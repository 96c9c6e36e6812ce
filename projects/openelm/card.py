"""The model card of an OpenELM release: architecture per layer, data, tokens seen, evaluation.

Everything comes from files a run leaves behind: ``recipe.json``, ``final.json``, the newest
checkpoint's ``meta.json`` (world size), the training shards' ``dataset.json`` (corpus, tokenizer,
packing), and the optional ``baseline.json`` (``corefm openelm baseline``), ``average.json``
(``corefm openelm average``) and ``lm_eval.json`` (``corefm openelm lm-eval``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from projects.openelm.config import OpenELMConfig, layer_specs


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def data_producer(recipe: dict) -> tuple[Path | None, dict]:
    """(manifest folder, producer record) of the recipe's training shards, when they carry a manifest."""
    train = str(recipe.get("data", {}).get("train", "")).partition("#")[0]
    folder = Path(train) if train and "::" not in train and "," not in train else None
    if folder is None or not (folder / "dataset.json").is_file():
        return None, {}
    return folder, _read_json(folder / "dataset.json").get("producer", {})


def world_size(run_dir: Path) -> int:
    ckpts = sorted((run_dir / "checkpoints").glob("step_*/meta.json")) if (run_dir / "checkpoints").is_dir() else []
    return int(_read_json(ckpts[-1]).get("world_size", 1)) if ckpts else 1


def tokens_seen(recipe: dict, final: dict, producer: dict, ranks: int) -> int:
    """Optimizer steps x global batch x sequence length (padding included for chunk-pad data)."""
    train = recipe.get("train", {})
    seq = recipe.get("task", {}).get("seq_len") or producer.get("seq_len") or 0
    return int(final.get("step", 0)) * train.get("micro_batch_size", 0) * train.get("grad_accum", 1) * ranks * seq


def _architecture(cfg: OpenELMConfig, params: int) -> str:
    specs = layer_specs(cfg)
    head = [
        "| field | value |", "|---|---|",
        f"| parameters | {params:,} |",
        f"| layers | {cfg.num_transformer_layers} |",
        f"| model width | {cfg.model_dim} |",
        f"| head dim | {cfg.head_dim} |",
        f"| query heads per KV head | {cfg.num_gqa_groups} |",
        f"| vocabulary | {cfg.vocab_size:,} ({'tied' if cfg.share_input_output_layers else 'untied'} embeddings) |",
        f"| context | {cfg.max_context_length} (RoPE theta {cfg.rope_freq_constant}) |",
        f"| norms | RMSNorm eps {cfg.norm_eps}, QK-norm {cfg.normalize_qk_projections} |",
    ]
    rows = ["| layer | query heads | KV heads | FFN width |", "|---:|---:|---:|---:|"]
    rows += [f"| {i} | {s.num_heads} | {s.num_kv_heads} | {s.ffn_dim} |" for i, s in enumerate(specs)]
    return "\n".join(head) + "\n\nLayer-wise scaling (SwiGLU FFN, GQA):\n\n" + "\n".join(rows)


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _metrics_table(rows: list[tuple[str, str, Any]]) -> str:
    out = ["| evaluation | metric | value |", "|---|---|---:|"]
    for source, name, value in rows:
        shown = f"{value:.4f}" if isinstance(value, float) else f"{value}"
        out.append(f"| {source} | {name} | {shown} |")
    return "\n".join(out) if len(out) > 2 else "No evaluation was recorded."


def model_card(run_dir: Path, recipe: dict, final: dict, cfg: OpenELMConfig, params: int,
               averaged_steps: list[int], tokenizer_note: str, usage: str) -> str:
    folder, producer = data_producer(recipe)
    ranks = world_size(run_dir)
    seen = tokens_seen(recipe, final, producer, ranks)
    train, optim, sched = recipe.get("train", {}), recipe.get("optim", {}), recipe.get("schedule", {})
    task = recipe.get("task", {})
    average = _read_json(run_dir / "average.json")
    evals: list[tuple[str, str, Any]] = []
    use_avg = averaged_steps and average.get("steps") == averaged_steps and average.get("eval")
    held_out = average["eval"] if use_avg else final.get("eval") or {}
    label = "held-out shards (averaged weights)" if use_avg else "held-out shards"
    evals += [(label, k, v) for k, v in held_out.items()]
    unigram = _read_json(run_dir / "baseline.json").get("unigram", {})
    if "perplexity" in unigram:
        evals.append(("unigram baseline (add-one, train counts)", "perplexity", unigram["perplexity"]))
    for name, metrics in _read_json(run_dir / "lm_eval.json").get("results", {}).items():
        evals += [(f"lm-eval {name}", k, v) for k, v in metrics.items() if isinstance(v, (int, float))]
    data_lines = [f"- shards: `{recipe.get('data', {}).get('train', '')}` (validation: "
                  f"`{recipe.get('data', {}).get('val', '')}`)"]
    if producer:
        tok = producer.get("tokenizer", {})
        data_lines += [
            f"- corpus: {producer.get('corpus', ', '.join(producer.get('args', {}).get('inputs', [])[:3]))}",
            f"- {_n(producer.get('documents', '?'))} documents, {_n(producer.get('tokens', '?'))} tokens, "
            f"`{producer.get('mode')}` mode (seq_len {producer.get('seq_len')}), by `{producer.get('name')}`",
            f"- tokenizer: {_n(tok.get('vocab_size', '?'))} pieces, sha256 `{str(tok.get('sha256', ''))[:16]}...`"
            f" {tokenizer_note}",
        ]
    weights = (f"the mean of the checkpoints at steps {', '.join(map(str, averaged_steps))}"
               if averaged_steps else f"the checkpoint at step {final.get('step')}")
    return f"""---
library_name: transformers
tags: [corefm, openelm, causal-lm]
---
# OpenELM ({run_dir.name})

A decoder-only language model with OpenELM's layer-wise scaling (arXiv 2404.14619), trained with
corefm. The weights use Apple's OpenELM names and `config.json` fields. Weights: {weights}.

## Architecture
{_architecture(cfg, params)}

## Data
{chr(10).join(data_lines)}

## Training
- {final.get('step')} optimizer steps on {ranks} rank(s), global batch {train.get('micro_batch_size', 0) * train.get('grad_accum', 1) * ranks} sequences: {seen:,} tokens seen
- AdamW lr {optim.get('lr')} betas {optim.get('betas')} weight decay {optim.get('weight_decay')}, {sched.get('name')} schedule with {sched.get('warmup_steps')} warm-up steps (min {sched.get('min_lr_ratio')}x), grad clip {train.get('grad_clip')}
- precision {recipe.get('deepspeed', {}).get('precision')}, ZeRO-{recipe.get('deepspeed', {}).get('zero_stage')}, z-loss {task.get('z_loss', 0)}, task `{task.get('name')}`
- final training loss: {final.get('loss')}

## Evaluation
{_metrics_table(evals)}
{usage}"""
