"""``corefm openelm instruct-data | instruct-pack | instruct-eval``: the argument tables and their commands."""

from __future__ import annotations

import argparse
import json


def add_instruct_cli(sub) -> None:
    d = sub.add_parser("instruct-data", help="a chat instruction set from WordNet (definitions, examples, synonyms)",
                       description="Write OUT/train.jsonl and OUT/val.jsonl ({\"messages\": [...]} per line) from the "
                                   "WordNet 3.0 dict files: 'What does the noun X mean?' -> the first sense's "
                                   "definition, 'Use ... in a sentence.' -> a gloss example, 'Give a synonym ...'. "
                                   "The split is by word (sha256 order), so held-out words are never trained on.")
    d.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet dict folder (Debian wordnet-base)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--val-words", type=int, default=500, help="words held out for validation (default 500)")
    d.add_argument("--max-words", type=int, default=0, help="keep only this many training words (0 = all)")
    d.set_defaults(func=_instruct_data)

    p = sub.add_parser("instruct-pack", help="tokenize chat JSONL with the chat template and pack it into shards",
                       description="Apply the chat template to every conversation, label only the assistant's "
                                   "tokens, pack several conversations per row of --seq-len tokens (first-fit; each "
                                   "row records which example every token belongs to) and write OUT/train and "
                                   "OUT/val shard sets plus OUT/tokenizer (the tokenizer with the template).")
    p.add_argument("--train", required=True, help="JSONL of {\"messages\": [{\"role\", \"content\"}, ...]}")
    p.add_argument("--val", default="", help="held-out JSONL (same format)")
    p.add_argument("--tokenizer", required=True, help="the base model's release folder (or a tokenizer folder)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per packed row (default 256)")
    p.add_argument("--train-shards", type=int, default=8)
    p.add_argument("--val-shards", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the packing order")
    p.add_argument("--chat-template", default="", help="a Jinja file to use instead of corefm's template "
                                                       "(it must mark replies with {%% generation %%})")
    p.set_defaults(func=_instruct_pack)

    e = sub.add_parser("instruct-eval", help="held-out response loss of a release or adapter folder",
                       description="Mean negative log-likelihood of the response tokens of packed shards (the "
                                   "instruct_lm task's measure), for a base release, a merged release or a peft "
                                   "adapter folder (merged into its base first).")
    e.add_argument("folder", help="OpenELM release folder or peft adapter folder")
    e.add_argument("--data", required=True, help="packed shards, e.g. data/wordnet_chat/val")
    e.add_argument("--base", default="", help="base model of an adapter folder (default: its adapter_config.json)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--label", default="", help="name printed before the result")
    e.add_argument("--json", action="store_true", help="print the result as one JSON object instead")
    e.set_defaults(func=_instruct_eval)


def _instruct_data(args: argparse.Namespace) -> int:
    from projects.openelm.instruct.wordnet import write_instruct_data

    manifest = write_instruct_data(args.wordnet, args.out, val_words=args.val_words, max_words=args.max_words)
    for name, counts in manifest["splits"].items():
        kinds = ", ".join(f"{v:,} {k}" for k, v in counts["kinds"].items())
        print(f"{args.out}/{name}.jsonl: {counts['examples']:,} conversations about {counts['words']:,} words ({kinds})")
    return 0


def _instruct_pack(args: argparse.Namespace) -> int:
    from projects.openelm.instruct.packing import pack_chat_data

    result = pack_chat_data(args.train, args.val or None, args.tokenizer, args.out, args.seq_len,
                            train_shards=args.train_shards, val_shards=args.val_shards, seed=args.seed,
                            template_file=args.chat_template or None)
    for name, s in result.items():
        dropped = f", {s['dropped_too_long']:,} longer than --seq-len dropped" if s["dropped_too_long"] else ""
        print(f"{name}: {s['path']}: {s['examples']:,} conversations in {s['rows']:,} rows of {args.seq_len} "
              f"({s['fill']:.1%} filled), {s['response_tokens']:,} response tokens, {s['shards']} shard(s){dropped}")
    return 0


def _instruct_eval(args: argparse.Namespace) -> int:
    from projects.openelm.instruct.evaluate import evaluate_folder

    result = evaluate_folder(args.folder, args.data, args.batch_size, base=args.base)
    if args.json:
        print(json.dumps(result))
        return 0
    label = f"{args.label}: " if args.label else ""
    print(f"{label}held-out response loss {result['loss']:.4f} (perplexity {result['perplexity']:.1f}, "
          f"token accuracy {result['token_accuracy']:.3f}, {result['tokens']:,} response tokens) {args.folder}")
    return 0
