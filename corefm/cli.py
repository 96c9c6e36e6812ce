"""The ``corefm`` command: ``corefm train|eval|export|release|plot|data ...`` and ``corefm PROJECT VERB``.

Projects plug in through pyproject.toml's ``corefm.commands`` entry points: ``name =
"module:add_cli"``, where ``add_cli(sub)`` adds its verbs to the ``corefm name`` table (see
:mod:`corefm.registry`). corefm imports no project module except the one a command names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from corefm.errors import CorefmError

EPILOG = "Every command prints a one-line 'corefm: error: ...' on bad input and exits with code 2."
_STOP = None  # corefm train's stop-signal flag (corefm.train.signals.StopFlag), set first thing


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a recipe (one or many processes, one or many nodes)",
                       description="Train RECIPE through DeepSpeed. Re-running the same command resumes "
                                   "from the run's latest checkpoint.", epilog=EPILOG)
    p.add_argument("recipe", help="YAML recipe (see projects/*/configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.max_steps=200 (repeatable)")
    p.add_argument("--nproc", type=int, default=1, help="processes on this node (GPUs, or CPU ranks)")
    p.add_argument("--nnodes", type=int, default=1, help="number of nodes (static multi-node)")
    p.add_argument("--node-rank", type=int, default=0, help="this node's index in 0..nnodes-1")
    p.add_argument("--master-addr", default="127.0.0.1", help="address of node 0")
    p.add_argument("--master-port", type=int, default=0, help="port on node 0 (default: a free one, single node)")
    p.add_argument("--hostfile", default="", help="DeepSpeed hostfile: launch on its nodes via pdsh/ssh")
    p.add_argument("--launcher", choices=("corefm", "deepspeed"), default="corefm",
                   help="who starts the local processes: corefm (one-line errors) or DeepSpeed's launcher")
    p.add_argument("--force", action="store_true",
                   help="take the run directory's lock even if another run seems to hold it (one known dead)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from corefm.data.urls import expand_urls
    from corefm.train.config import load_recipe
    from corefm.train.launcher import LaunchSpec, check_spec, launch
    from corefm.train.run_lock import RunLock

    # Validate in this process so a typo or a missing shard costs one line, not N tracebacks.
    spec = LaunchSpec(nproc=args.nproc, nnodes=args.nnodes, node_rank=args.node_rank,
                      master_addr=args.master_addr, master_port=args.master_port, hostfile=args.hostfile,
                      launcher=args.launcher)
    check_spec(spec)
    recipe = load_recipe(args.recipe, args.overrides)
    for data in (recipe.data.train, recipe.data.val):
        if data:
            expand_urls(data)
    worker_args = [args.recipe, *sum((["--set", o] for o in args.overrides), [])]
    if _STOP is not None and _STOP.requested:
        print("corefm: stopped by signal before the first step; nothing to save")
        return 0
    if spec.node_rank != 0:  # node 0's launcher holds the run directory's lock for every node
        return launch(spec, worker_args, _STOP)
    lock = RunLock(recipe.run_dir)
    token = lock.acquire(force=args.force, note=lambda m: print(m, file=sys.stderr))
    try:
        return launch(spec, [*worker_args, "--run-token", token], _STOP)
    finally:
        lock.release()


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a finished run on held-out shards",
                       description="Load RUN_DIR/model.safetensors and evaluate on the recipe's data.val "
                                   "(or --data).", epilog=EPILOG)
    p.add_argument("run_dir")
    p.add_argument("--data", default="", help="shards to evaluate on instead of the recipe's data.val")
    p.add_argument("--weights", choices=("raw", "ema"), default="raw",
                   help="model.safetensors (raw) or model_ema.safetensors (a run with ema.momentum)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from corefm.train.evaluate import evaluate_run

    metrics = evaluate_run(Path(args.run_dir), args.data, args.overrides, args.weights)
    print(json.dumps(metrics, indent=2))
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="consolidate the latest checkpoint into fp32 model.safetensors",
                       description="Write RUN_DIR/model.safetensors from the latest checkpoint, and "
                                   "RUN_DIR/model_ema.safetensors beside it when the run keeps a weight EMA.",
                       epilog=EPILOG)
    p.add_argument("run_dir")
    p.add_argument("--out", default="", help="output file (default RUN_DIR/model.safetensors)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from corefm.train.evaluate import export_run

    for path in export_run(Path(args.run_dir), Path(args.out) if args.out else None):
        print(path)
    return 0


def _add_release(sub) -> None:
    p = sub.add_parser("release", help="write a release folder and push it to the Hugging Face Hub",
                       description="Write OUT with weights, config and a model card. Without --push this "
                                   "is a dry run listing what would be uploaded. The token is read from "
                                   "HF_TOKEN.", epilog=EPILOG)
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="release folder to write")
    p.add_argument("--push", default="", metavar="ORG/NAME", help="upload to this Hub repository")
    p.add_argument("--private", action="store_true", help="create the Hub repository as private")
    p.add_argument("--weights", choices=("raw", "ema"), default="raw",
                   help="release the trained weights (raw) or their EMA (a run with ema.momentum)")
    p.set_defaults(func=cmd_release)


def cmd_release(args: argparse.Namespace) -> int:
    from corefm.hub.release import release

    release(Path(args.run_dir), Path(args.out), args.push, args.private, args.weights)
    return 0


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw training curves of one or more runs from their metrics.jsonl",
                       description="One subplot per metric, every RUN overlaid with its folder name in the legend; "
                                   "eval points are marked, a step a resumed run logged twice is drawn once (the "
                                   "latest record). Metric names: train keys as logged (loss, lr), eval keys as "
                                   "eval.KEY (eval.accuracy).", epilog=EPILOG)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder (holding metrics.jsonl)")
    p.add_argument("--metrics", default="",
                   help="comma-separated, e.g. loss,eval.accuracy (default: loss and the eval metrics, up to 6)")
    p.add_argument("--out", default="", help="picture to write, .png/.svg/.pdf (default: RUN/curves.png for one "
                                             "run, ./curves.png for several)")
    p.add_argument("--smooth", type=int, default=0, metavar="N",
                   help="moving average of the training curves over N logged points (raw values drawn faint)")
    p.add_argument("--x", choices=("step", "samples", "tokens"), default="step",
                   help="x axis: optimizer step, or samples/tokens seen (derived from the recipe's batch, the "
                        "ranks and the logged rates)")
    p.add_argument("--title", default="", help="a title over the picture")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    from corefm.viz.curves import plot_runs

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    out = Path(args.out) if args.out else (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1
                                          else Path("curves.png"))
    print(f"wrote {plot_runs([Path(r) for r in args.runs], out, metrics, args.smooth, args.x, args.title)}")
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """corefm's own verbs, ``corefm data ...``, and one group per declared project command.

    A project's group is filled (its cli module imported) only when ``argv`` names it, so
    ``corefm train`` and ``corefm --help`` import no project.
    """
    from corefm.data.cli import add_cli as add_data_cli
    from corefm.registry import declared, import_declared

    parser = argparse.ArgumentParser(prog="corefm", description="Train, evaluate and release corefm models. "
                                     "`corefm PROJECT --help` lists a project's tools.", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_release(sub)
    _add_plot(sub)
    add_data_cli(sub)
    for name, ep in sorted(declared("command").items()):
        if argv and argv[0] == name:
            import_declared("command", name)  # a failing import is one line naming the module
            module = sys.modules[ep.module]
            p = sub.add_parser(name, help=getattr(module, "HELP", ""), description=getattr(module, "HELP", None),
                               epilog=EPILOG)
            ep.load()(p.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND"))
        else:
            sub.add_parser(name, help=f"{name} project tools (corefm {name} --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        # Before the slow imports: a stop signal while the launcher starts up ends it cleanly
        # (cmd_train checks, and the launcher forwards later ones to the ranks).
        from corefm.train.signals import StopFlag

        global _STOP
        _STOP = StopFlag()
    from corefm.quiet import quiet_libraries

    quiet_libraries()
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        return args.func(args)
    except CorefmError as e:
        print(f"corefm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("corefm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
