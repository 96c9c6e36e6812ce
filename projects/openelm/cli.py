"""``corefm data llama-tokenizer`` and ``corefm data train-tokenizer``.

:func:`add_tokenizer_cli` takes the ``corefm data`` sub-command table (the object returned by
``add_subparsers`` on the ``data`` parser) and adds both commands to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from corefm.errors import CorefmError


def add_tokenizer_cli(sub) -> None:
    p = sub.add_parser(
        "llama-tokenizer", help="build LLaMA's tokenizer (OpenELM's) from the vocabulary in llama-cpp-python",
        description="Write tokenizer.model + tokenizer.json + tokenizer_config.json from the LLaMA vocabulary "
                    "GGUF that ships in the llama-cpp-python==0.3.36 source archive (no gated Hub repo), and "
                    "check it against llama.cpp's reference tokenizations when they sit beside the GGUF.")
    p.add_argument("--source", default="pypi",
                   help="a .gguf vocabulary, the llama_cpp_python-0.3.36.tar.gz sdist, or 'pypi' to download "
                        "it with pip into ~/.cache/corefm (default)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-bos", action="store_true", help="do not prepend <s> when encoding")
    p.set_defaults(func=_llama_tokenizer)

    t = sub.add_parser("train-tokenizer", help="train a SentencePiece BPE tokenizer on text files",
                       description="Train a fresh SentencePiece model (LLaMA's settings: byte fallback, split "
                                   "digits) and write tokenizer.model + HF tokenizer files.")
    t.add_argument("--input", nargs="+", required=True, help="text files, one sentence/document per line")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    t.set_defaults(func=_train_tokenizer)


def _llama_tokenizer(args: argparse.Namespace) -> int:
    from projects.openelm.tokenizer import build_llama_tokenizer, check_references, gguf_from_source, load_tokenizer

    gguf = gguf_from_source(args.source)
    out = build_llama_tokenizer(gguf, Path(args.out), add_bos_token=not args.no_bos)
    tokenizer = load_tokenizer(out)
    total, bad = check_references(tokenizer, gguf)
    if bad:
        raise CorefmError(f"{len(bad)}/{total} reference tokenizations differ, first: {bad[0]}")
    checked = f"; {total}/{total} llama.cpp reference tokenizations match" if total else ""
    print(f"{out}: LLaMA tokenizer ({len(tokenizer):,} pieces){checked}")
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from projects.openelm.tokenizer import train_sentencepiece

    out = train_sentencepiece(args.input, args.vocab_size, Path(args.out), model_type=args.model_type)
    print(f"{out}: SentencePiece {args.model_type} tokenizer, {args.vocab_size} pieces")
    return 0
