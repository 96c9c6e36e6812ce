"""``corefm openelm ...``: tokenizers, token shards, the unigram baseline, checkpoint averaging,
lm-eval and generation.

:func:`add_cli` receives the ``corefm openelm`` sub-command table (declared in pyproject.toml's
``corefm.commands``); only this module is imported to build it, the tools import what they need.
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


HELP = "OpenELM: tokenizers, token shards, unigram baseline, checkpoint averaging, lm-eval, generate, instruction tuning (instruct-data/pack/eval)"


def add_cli(sub) -> None:
    """``corefm openelm llama-tokenizer|train-tokenizer|tokenize|shakespeare|baseline|average|lm-eval|generate``."""
    from projects.openelm.data.cli import add_text_cli

    add_tokenizer_cli(sub)
    add_text_cli(sub)
    add_run_tools(sub)
    add_convert_cli(sub)
    from projects.openelm.instruct.cli import add_instruct_cli

    add_instruct_cli(sub)


def add_run_tools(sub) -> None:
    """``baseline``, ``average``, ``lm-eval`` and ``generate``."""
    b = sub.add_parser("baseline", help="unigram perplexity of the val shards (add-one counts from train shards)",
                       description="Print the add-one unigram perplexity of a run's data.val targets with counts "
                                   "from its data.train, beside the run's own validation perplexity (final.json).")
    b.add_argument("run_dir", nargs="?", default="", help="a finished run (uses its recipe's data and crop)")
    b.add_argument("--train", default="", help="train shards instead of a run's")
    b.add_argument("--val", default="", help="val shards instead of a run's")
    b.set_defaults(func=_baseline)

    a = sub.add_parser("average", help="average the fp32 weights of a run's last K checkpoints",
                       description="Consolidate each of the newest K checkpoints (any ZeRO stage) and write their "
                                   "mean as one safetensors file (Apple released the average of the last 5). The "
                                   "run must keep them: checkpoint.keep_last >= K.")
    a.add_argument("run_dir")
    a.add_argument("--last", type=int, default=5, help="number of newest checkpoints to average (default 5)")
    a.add_argument("--out", default="", help="output file (default RUN_DIR/model_avg<K>.safetensors); "
                                             "RUN_DIR/model.safetensors makes `corefm release` ship the average")
    a.add_argument("--no-eval", action="store_true", help="do not score the average on the recipe's data.val")
    a.set_defaults(func=_average)

    e = sub.add_parser("lm-eval", help="run EleutherAI lm-evaluation-harness tasks on a release folder",
                       description="Evaluate a `corefm release` folder (or any OpenELM HF folder) with lm-eval's "
                                   "Hugging Face model and add_bos_token=True, offline. Needs the `eval` extra.")
    e.add_argument("release_dir", help="a release folder or a Hub id org/name (HF_HUB_OFFLINE=1: cache only)")
    e.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    e.add_argument("--include-path", default="", help="folder of extra task YAML files (local datasets)")
    e.add_argument("--num-fewshot", type=int, default=None)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--limit", type=float, default=None, help="examples per task (or a fraction)")
    e.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    e.add_argument("--output", default="", help="write the results as JSON here (default RELEASE_DIR/lm_eval.json; "
                                                "for a Hub id ./lm_eval_ORG--NAME.json)")
    e.set_defaults(func=_lm_eval)

    g = sub.add_parser("generate", help="continue a prompt with a release folder's model and tokenizer")
    g.add_argument("release_dir", help="a release folder or a Hub id org/name (HF_HUB_OFFLINE=1: cache only)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--chat", action="store_true",
                   help="wrap the prompt as a user turn with the tokenizer's chat template (instruction-tuned models)")
    g.add_argument("--system", default="", help="with --chat: a system message before the user turn")
    g.set_defaults(func=_generate)


def _baseline(args: argparse.Namespace) -> int:
    import json

    from projects.openelm.baseline import run_baseline, unigram_perplexity

    if args.train or args.val:
        if not (args.train and args.val):
            raise CorefmError("give both --train and --val (or a run folder)")
        result = unigram_perplexity(args.train, args.val)
        print(f"unigram perplexity {result['perplexity']:.1f} on {result['val_tokens']:,} val tokens")
        return 0
    if not args.run_dir:
        raise CorefmError("give a run folder, or --train and --val shards")
    run_dir = Path(args.run_dir)
    result = run_baseline(run_dir)
    (run_dir / "baseline.json").write_text(json.dumps({"unigram": result}, indent=2))
    final = run_dir / "final.json"
    model_ppl = (json.loads(final.read_text()).get("eval") or {}).get("perplexity") if final.is_file() else None
    if model_ppl is None:
        print(f"unigram perplexity {result['perplexity']:.1f} ({result['val_tokens']:,} val tokens); "
              f"{run_dir} has no final validation perplexity yet")
    else:
        print(f"val ppl {model_ppl:.1f} vs unigram {result['perplexity']:.1f} "
              f"({result['val_tokens']:,} held-out tokens, {result['perplexity'] / model_ppl:.1f}x lower)")
    return 0


def _average(args: argparse.Namespace) -> int:
    from projects.openelm.average import average_checkpoints

    out, steps, metrics = average_checkpoints(Path(args.run_dir), args.last, Path(args.out) if args.out else None,
                                              evaluate=not args.no_eval)
    print(f"{out}: mean of the checkpoints at steps {', '.join(map(str, steps))}")
    if metrics:
        print("held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


def _lm_eval(args: argparse.Namespace) -> int:
    import json

    from projects.openelm.lm_eval_adapter import evaluate_release

    results = evaluate_release(Path(args.release_dir), args.tasks.split(","), include_path=args.include_path,
                               num_fewshot=args.num_fewshot, batch_size=args.batch_size, limit=args.limit,
                               dtype=args.dtype)
    # A Hub id's folder is huggingface_hub's cache, not a place for results: those go to the working directory.
    default = (Path(args.release_dir) / "lm_eval.json" if Path(args.release_dir).is_dir()
               else Path(f"lm_eval_{args.release_dir.replace('/', '--')}.json"))
    out = Path(args.output) if args.output else default
    out.write_text(json.dumps(results, indent=2))
    for task, metrics in results["results"].items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        print(f"{task}: {shown}")
    print(f"results: {out}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch

    from projects.openelm.convert import load_hf, resolve_release
    from projects.openelm.tokenizer import load_tokenizer

    folder = resolve_release(args.release_dir)  # a folder or a Hub id org/name
    if (folder / "adapter_config.json").is_file():  # a peft LoRA folder: merged into its base
        from projects.openelm.instruct.release import load_model_folder

        model, cfg = load_model_folder(folder)
    else:
        model, cfg = load_hf(folder)
    tokenizer = load_tokenizer(folder)
    if args.chat:
        from projects.openelm.instruct.chat import chat_prompt_ids

        ids = torch.tensor([chat_prompt_ids(tokenizer, args.prompt, args.system)])
    else:
        if args.system:
            raise CorefmError("--system goes with --chat")
        ids = torch.tensor([tokenizer(args.prompt)["input_ids"]])
    out = model.eval().generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                eos_token_id=cfg.eos_token_id, generator=torch.Generator().manual_seed(args.seed))
    print(tokenizer.decode(out[0].tolist(), skip_special_tokens=True))
    return 0


def add_convert_cli(sub) -> None:
    """``corefm openelm convert --from-corenet CKPT --config RECIPE --out DIR`` and ``--to-corenet RELEASE``."""
    c = sub.add_parser(
        "convert", help="CoreNet OpenELM checkpoint <-> transformers release folder",
        description="--from-corenet CKPT.pt --config RECIPE.yaml --out DIR: a CoreNet (apple/corenet) OpenELM "
                    "checkpoint (bare model state dict or training checkpoint, with or without DDP's module. "
                    "prefix) and its YAML recipe (model.language_modeling.general_gpt.*) -> a folder that "
                    "transformers loads with trust_remote_code=True. --to-corenet RELEASE --out CKPT.pt "
                    "[--config-out RECIPE.yaml]: a release folder or Hub id -> CoreNet's model state dict "
                    "(what CoreNet's model.pretrained loads) and a recipe model: section.")
    c.add_argument("--from-corenet", metavar="CKPT", default="", help="CoreNet checkpoint (.pt)")
    c.add_argument("--to-corenet", metavar="RELEASE", default="", help="release folder or Hub id org/name")
    c.add_argument("--config", metavar="RECIPE", default="", help="CoreNet YAML recipe (with --from-corenet)")
    c.add_argument("--out", required=True, help="output folder (--from-corenet) or .pt file (--to-corenet)")
    c.add_argument("--tokenizer", metavar="DIR", default="",
                   help="folder with the tokenizer files to ship (CoreNet's OpenELM uses LLaMA's: "
                        "`corefm openelm llama-tokenizer --out DIR` builds it)")
    c.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="cast the released weights (default: the checkpoint's dtype)")
    c.add_argument("--ema", action="store_true", help="take a training checkpoint's ema_state_dict")
    c.add_argument("--vocab-size", type=int, default=None,
                   help="keep the first N embedding rows (CoreNet's recipes pad 32,000 to 32,128; Apple's "
                        "HF releases keep 32000)")
    c.add_argument("--config-out", metavar="RECIPE", default="",
                   help="with --to-corenet: also write a CoreNet recipe's model: section")
    c.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    if bool(args.from_corenet) == bool(args.to_corenet):
        raise CorefmError("give exactly one of --from-corenet CKPT and --to-corenet RELEASE")
    if args.from_corenet:
        if not args.config:
            raise CorefmError("--from-corenet needs --config (the CoreNet YAML recipe it was trained with)")
        if args.config_out:
            raise CorefmError("--config-out goes with --to-corenet")
        return _from_corenet(args)
    unused = [f for f, v in (("--config", args.config), ("--tokenizer", args.tokenizer), ("--dtype", args.dtype),
                             ("--ema", args.ema), ("--vocab-size", args.vocab_size)) if v]
    if unused:
        raise CorefmError(f"{unused[0]} goes with --from-corenet, not --to-corenet")
    from projects.openelm.corenet import convert_to_corenet

    files, cfg, name = convert_to_corenet(args.to_corenet, args.out, args.config_out or None)
    print(f"{files[0]}: CoreNet general_gpt state dict ({cfg.num_transformer_layers} layers, "
          f"vocab {cfg.vocab_size}); load it with CoreNet's model.pretrained")
    if name is not None:
        print(f"{files[1]}: recipe model: section, model_name {name!r}")
    return 0


def _from_corenet(args: argparse.Namespace) -> int:
    import torch

    from projects.openelm.corenet import convert_from_corenet

    files, cfg, rec = convert_from_corenet(
        args.from_corenet, args.config, args.out, tokenizer_dir=args.tokenizer or None,
        dtype=getattr(torch, args.dtype) if args.dtype else None, ema=args.ema, vocab_size=args.vocab_size)
    print(f"{args.out}: transformers folder from CoreNet {rec.model_name!r} ({cfg.num_transformer_layers} layers, "
          f"vocab {cfg.vocab_size}, {len(files)} files)")
    if args.tokenizer:
        print(f"tokenizer: copied from {args.tokenizer}")
    else:
        named = f"; the recipe names {rec.tokenizer_path}" if rec.tokenizer_path else ""
        print(f"tokenizer: none given, so the folder has none (CoreNet's OpenELM uses LLaMA's{named}): build it "
              f"with `corefm openelm llama-tokenizer --out DIR` and rerun with --tokenizer DIR")
    return 0
